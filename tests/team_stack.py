"""The team stack for tests/test_team_*.py (a pytest plugin: tests/conftest.py loads it).

Real servers, started once per test session on free loopback ports and stopped by their process
ids: a PostgreSQL from Debian's server binaries in a temporary data folder, run as an unprivileged
user; ``mlflow server`` and ``prefect server start`` on it, each with the command and environment
of its service in ``deploy/compose.yaml`` (service names, ports and folders replaced by loopback
ones), so that the compose file's commands are the ones tested.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deploy" / "compose.yaml"
PG_PASSWORD = "team-test"  # the test cluster trusts loopback; the URLs carry it as compose does
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# deploy/compose.yaml, read as `docker compose` would for the variables used here


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def compose_service(name: str, variables: dict[str, str] | None = None) -> dict:
    """A service of deploy/compose.yaml with its command and environment interpolated."""
    variables = {"POSTGRES_PASSWORD": PG_PASSWORD, **(variables or {})}
    service = dict(yaml.safe_load(COMPOSE.read_text())["services"][name])
    service["command"] = [interpolate(str(a), variables) for a in service.get("command", [])]
    service["environment"] = {k: interpolate(str(v), variables) for k, v in (service.get("environment") or {}).items()}
    return service


def with_options(args: list[str], values: dict[str, str]) -> list[str]:
    """``args`` with the values of the named options replaced (``--port 5000`` -> ``--port 54321``)."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg in values:
            out[i + 1] = values[arg]
    missing = set(values) - set(out)
    assert not missing, f"{missing} not in {args}"
    return out


# ------------------------------------------------------------------------------------------------
# processes


@dataclass
class Server:
    """A server process of the test session: started in its own session, stopped by its process id."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    health: str  # URL that answers 200 once the server is up
    cwd: Path | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its children (uvicorn, workers) form a group led by this pid
                user=self.user,
            )
        return self

    def wait_healthy(self, timeout: float = 240) -> Server:
        deadline = time.monotonic() + timeout
        while not answers(self.health):
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name} did not start ({self.cmd}); its log:\n{tail(self.log)}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        """Signal the process group that this server's pid leads; kill it if it has not ended in 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, self.stop_signal)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def answers(url: str, host: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bin() -> Path:
    """Debian's server binaries: on PATH, or /usr/lib/postgresql/<version>/bin (the package's place)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        pytest.fail("PostgreSQL server binaries not found: install Debian's postgresql package (.ci/run does)")
    return versions[-1].parent


def unprivileged_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (the package's user) or `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.fail("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


@dataclass
class Postgres:
    server: Server
    port: int
    folder: Path

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://gaugan:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"


def start_postgres() -> Postgres:
    pg_bin, user = postgres_bin(), unprivileged_user()
    folder = Path(tempfile.mkdtemp(prefix="gaugan-pg-"))  # not under pytest's root-only tmp folders
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    subprocess.run(
        [pg_bin / "initdb", "-D", data, "-U", "gaugan", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        user=user,
    )
    port = free_port()
    cmd = [str(pg_bin / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder)]
    cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    log = folder / "postgres.log"
    log.touch()
    if user is not None:
        os.chown(log, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    # SIGINT: PostgreSQL's "fast" shutdown; the health URL is unused (pg_isready below)
    server = Server("postgres", cmd, base_env(), log, "", user=user, stop_signal=signal.SIGINT).start()
    pg = Postgres(server, port, folder)
    deadline = time.monotonic() + 60
    isready = [str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "gaugan", "-d", "gaugan"]
    while subprocess.run(isready, capture_output=True).returncode != 0:
        if server.proc.poll() is not None or time.monotonic() > deadline:  # type: ignore[union-attr]
            server.stop()
            pytest.fail(f"PostgreSQL did not start; its log:\n{tail(log)}")
        time.sleep(0.3)
    for database in ("mlflow", "prefect"):  # what deploy/postgres/init-databases.sql does in compose
        subprocess.run(
            [pg_bin / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "gaugan", database],
            check=True,
            capture_output=True,
        )
    return pg


# ------------------------------------------------------------------------------------------------
# MLflow and Prefect, as deploy/compose.yaml runs them


def compose_server(name: str, folder: Path, port: int, health: str, options=None, env=None, pg=None) -> Server:
    """Compose's service ``name`` as a loopback process: ``options`` replace option values, ``env``
    adds or replaces variables, and database URLs point at ``pg`` instead of the host ``postgres``."""
    service = compose_service(name)
    cmd = with_options(service["command"], options or {})
    environment = service["environment"]
    if pg is not None:
        environment = {k: v.replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/") for k, v in environment.items()}
    environment.update(env or {})
    return Server(
        name,
        [str(BIN / cmd[0]), *cmd[1:]],
        base_env(**environment),
        folder / f"{name}.log",
        f"http://127.0.0.1:{port}{health}",
    )


def mlflow_server(pg: Postgres, folder: Path) -> Server:
    """``mlflow server`` of compose's ``mlflow`` service: PostgreSQL backend, artifacts proxied into ``folder``."""
    port = free_port()
    allowed = compose_service("mlflow")["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].replace(":5000", f":{port}")
    options = {"--artifacts-destination": str(folder / "mlartifacts"), "--host": "127.0.0.1", "--port": str(port)}
    options["--workers"] = "1"
    return compose_server("mlflow", folder, port, "/health", options, {"MLFLOW_SERVER_ALLOWED_HOSTS": allowed}, pg)


def prefect_server(pg: Postgres, folder: Path) -> Server:
    """``prefect server start`` of compose's ``prefect-server`` service, on the PostgreSQL database ``prefect``."""
    port = free_port()
    env = {"PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(folder / "prefect-server-home")}
    options = {"--host": "127.0.0.1", "--port": str(port)}
    return compose_server("prefect-server", folder, port, "/api/health", options, env, pg)


def prefect_worker(api_url: str, mlflow_url: str, workspace: Path, folder: Path) -> Server:
    """``prefect worker start`` of compose's ``prefect-worker`` service, serving ``workspace``."""
    port = free_port()
    env = {
        "PREFECT_API_URL": api_url,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "GAUGAN_WORKSPACE": str(workspace),
        "PREFECT_HOME": str(folder / "prefect-worker-home"),
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",  # in compose: 0.0.0.0 inside the container
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll often: the tests wait for its runs
    }
    return compose_server("prefect-worker", folder, port, "/health", env=env)


@dataclass
class TeamStack:
    postgres: Postgres
    mlflow: Server
    prefect: Server
    folder: Path

    @property
    def mlflow_url(self) -> str:
        return self.mlflow.health.removesuffix("/health")

    @property
    def prefect_url(self) -> str:
        return self.prefect.health.removesuffix("/health")

    @property
    def artifacts(self) -> Path:
        return self.folder / "mlartifacts"


@pytest.fixture(scope="session")
def team_stack(tmp_path_factory):
    """PostgreSQL, and the MLflow and Prefect servers on it (started side by side), for the session."""
    folder = tmp_path_factory.mktemp("team-stack")
    pg = start_postgres()
    mlflow = mlflow_server(pg, folder)
    prefect = prefect_server(pg, folder)
    try:
        mlflow.start()
        prefect.start()
        mlflow.wait_healthy()
        prefect.wait_healthy()
        yield TeamStack(pg, mlflow, prefect, folder)
    finally:
        for server in (mlflow, prefect, pg.server):
            server.stop()
        shutil.rmtree(pg.folder, ignore_errors=True)
