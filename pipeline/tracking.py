"""MLflow plumbing shared by the stages: where the store is, and the one run per trained model.

The train stage opens the run (:class:`Tracker`) and writes a small ``run.json`` into its outputs;
evaluate and register read that file and log into the same run (:func:`log_to_run`), so one row in
the MLflow UI is one model. mlflow is imported lazily: it costs seconds, and ranks other than 0
never need it. MLflow failures (a server that is down, a refused request) become
:class:`~pipeline.errors.TrackingError` naming the tracking URI.

A tracking server that is down is handled in two ways. At the start of a stage,
:func:`require_server` asks its ``/health`` once, with a short timeout, and the stage stops at once
naming the URI (MLflow's client would otherwise retry for minutes, after the work). During training,
the :class:`Tracker` relies on the client's own retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, 7, and
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, 2: about four minutes), which carry a server restart; past
that, it keeps the records in memory, keeps training, and sends them once the server answers again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import MissingInputError, TrackingError
from pipeline.io import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRef:
    run_id: str
    tracking_uri: str
    experiment: str


def resolve_tracking_uri(configured: str | None, root: Path | str = ".") -> str:
    """params > MLFLOW_TRACKING_URI > an absolute sqlite file at the project root.

    The path is absolute, and the project root is DVC's ``DVC_ROOT`` when DVC runs the stage: queued
    and temporary DVC experiments run in a copy of the repository under ``.dvc/tmp/exps``, and DVC
    points ``DVC_ROOT`` at the project they came from, so their runs land in the project's store.
    """
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    project = os.environ.get("DVC_ROOT") or root
    return f"sqlite:///{(Path(project).resolve() / 'mlflow.db')}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """A local sqlite store keeps its artifacts beside the database file (absolute path)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def is_server_uri(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def server_problem(tracking_uri: str, timeout: float = 5.0) -> str | None:
    """None when the tracking server at ``tracking_uri`` answers its ``/health``; else what went wrong.

    One request, no retries: a local store (sqlite) always passes.
    """
    if not is_server_uri(tracking_uri):
        return None
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"GET {url} answered HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return f"GET {url} answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"GET {url} failed: {reason}"


def require_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """Stop at once, naming the URI, when the MLflow tracking server does not answer."""
    problem = server_problem(tracking_uri, timeout)
    if problem is not None:
        raise TrackingError(
            f"the MLflow tracking server at {tracking_uri} is not reachable ({problem}); start it "
            "(deploy/compose.yaml: docker compose up -d mlflow), or point MLFLOW_TRACKING_URI "
            "(or mlflow.tracking_uri in params.yaml) at a running one"
        )


def require_run_server(run_json: Path) -> None:
    """The server of the training run named by ``run_json`` (if there is one) answers."""
    if run_json.is_file():
        require_server(read_run_ref(run_json).tracking_uri)


@contextmanager
def mlflow_errors(tracking_uri: str, what: str) -> Iterator[None]:
    """MLflow's exceptions inside the block become a TrackingError naming ``what`` and the URI."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise TrackingError(f"{what} failed at the MLflow tracking URI {tracking_uri}: {err.message}") from err


def ensure_experiment(name: str, tracking_uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow_errors(tracking_uri, f"opening the experiment {name!r}"):
        client = mlflow.MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name, artifact_location=artifact_root_for(tracking_uri))


def write_run_ref(path: Path | str, ref: RunRef, extra: dict | None = None) -> None:
    """run.json: the run; ``extra`` adds what else the run should be known by (e.g. its parent model)."""
    atomic_write_text(Path(path), json.dumps({**asdict(ref), **(extra or {})}, indent=2) + "\n")


def read_run_ref(path: Path | str) -> RunRef:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no MLflow run reference; run the train stage first")
    data = json.loads(path.read_text())
    return RunRef(run_id=data["run_id"], tracking_uri=data["tracking_uri"], experiment=data["experiment"])


@contextmanager
def resume_run(ref: RunRef) -> Iterator[object]:
    """Re-open the training run to add metrics, artifacts and tags to it."""
    import mlflow

    mlflow.set_tracking_uri(ref.tracking_uri)
    with mlflow_errors(ref.tracking_uri, f"logging into run {ref.run_id}"), mlflow.start_run(run_id=ref.run_id) as run:
        yield run


def finite_numbers(values: dict) -> dict[str, float]:
    """The entries that MLflow can take as metrics: finite ints and floats (not bools)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def run_for_model(meta: dict, run_json: Path) -> RunRef | None:
    """The MLflow run a generator's scores belong in: the run its file records with its store (an
    imported reference model's), else the training run of ``run_json`` when the file came from that
    run; None, with a warning saying why, when there is none."""
    if meta.get("run_id") and meta.get("tracking_uri"):
        return RunRef(str(meta["run_id"]), str(meta["tracking_uri"]), str(meta.get("experiment") or ""))
    if not run_json.is_file():
        log.warning(
            "%s not found: nothing was logged to MLflow (the files in the output folder are complete)", run_json
        )
        return None
    ref = read_run_ref(run_json)
    if meta.get("source") == "reference" or (meta.get("run_id") and meta["run_id"] != ref.run_id):
        log.warning(
            "the generator was not trained in run %s (%s): nothing was logged to MLflow (the files in the output "
            "folder are complete); import it with --register to give it a run",
            ref.run_id,
            run_json,
        )
        return None
    return ref


def log_to_run(ref: RunRef | None, metrics: dict, tags: dict, files: list[Path], folder: str) -> str | None:
    """Metrics, tags and files into the run ``ref`` (see :func:`run_for_model`); None when there is none."""
    if ref is None:
        return None
    import mlflow

    with resume_run(ref):
        mlflow.log_metrics(finite_numbers(metrics))
        mlflow.set_tags(tags)
        for f in files:
            mlflow.log_artifact(str(f), artifact_path=folder)
    return ref.run_id


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value
    return out


class Tracker:
    """The training run of one model: opened (or re-opened, on resume) by rank 0 of the train stage.

    Metrics and files logged while training that cannot reach the server (after the client's own
    retries) wait in order in memory and are sent, oldest first, once the server answers again;
    training does not stop for the tracking server. :meth:`end` sends what is left, or fails
    naming the URI.
    """

    def __init__(self, tracking_uri: str, experiment: str):
        import mlflow

        self.mlflow = mlflow
        self.uri = tracking_uri
        self.experiment = experiment
        self.experiment_id = ensure_experiment(experiment, tracking_uri)
        self.run: mlflow.ActiveRun | None = None
        self.pending: deque[Callable[[], object]] = deque()  # MLflow calls not made yet, oldest first
        self.failing_since: float | None = None

    def start(self, run_id: str | None, settings: dict, tags: dict, run_name: str | None = None) -> str:
        """Re-open ``run_id``, or start a run (named ``run_name``; None: MLflow's random name) logging
        ``settings`` (nested dicts, flattened) as params."""
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        with mlflow_errors(self.uri, "starting the training run"):
            if run_id is not None:
                self.run = mlflow.start_run(run_id=run_id)
            else:
                self.run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name)
                items = list(_flatten("", settings, {}).items())
                for i in range(0, len(items), 100):
                    mlflow.log_params({k: ("null" if v is None else v) for k, v in items[i : i + 100]})
            mlflow.set_tags({k: v for k, v in tags.items() if v is not None})
        assert self.run is not None  # start_run always returns the active run
        return self.run.info.run_id

    def log_dataset(self, dataset, tags: dict[str, str]) -> None:
        """The training data as the run's dataset input (MLflow's lineage: the UI's Datasets column)."""
        with mlflow_errors(self.uri, "logging the training dataset"):
            self.mlflow.log_input(dataset, context="training", tags=tags)

    def log_metrics(self, metrics: dict, step: int) -> None:
        numbers = finite_numbers(metrics)
        self.pending.append(lambda: self.mlflow.log_metrics(numbers, step=step))
        self._send()

    def log_artifact(self, path: Path, folder: str) -> None:
        self.pending.append(lambda: self.mlflow.log_artifact(str(path), artifact_path=folder))
        self._send()

    def _send(self, final: bool = False) -> None:
        """Send the waiting records in order; on failure keep them (and, while the server stays down,
        only ask its /health, so that training does not wait for the client's retries each time)."""
        from mlflow.exceptions import MlflowException

        if self.failing_since is not None and not final and server_problem(self.uri, timeout=2.0) is not None:
            return
        while self.pending:
            try:
                self.pending[0]()
            except (MlflowException, OSError) as err:
                if final:
                    raise TrackingError(
                        f"{len(self.pending)} records of run {self._run_id()} could not be sent to the MLflow "
                        f"tracking URI {self.uri}: {err}; the stage's files (losses.csv, metrics.json) are "
                        "complete, and rerunning the stage resumes this run"
                    ) from err
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning("MLflow at %s is not answering (%s); training goes on, records wait", self.uri, err)
                return
            self.pending.popleft()
        if self.failing_since is not None:
            log.warning(
                "MLflow at %s answers again after %.0f s; the waiting records were sent",
                self.uri,
                time.monotonic() - self.failing_since,
            )
            self.failing_since = None

    def _run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    def end(self, status: str) -> None:
        """Send what waits, then close the run with ``status``. If that fails, a finished run raises
        (the run stays open in MLflow; rerunning the stage resumes it); a failed or killed one only
        logs the problem, so that it does not hide the error that stopped training."""
        if self.run is None:
            return
        try:
            self._send(final=True)
            with mlflow_errors(self.uri, f"ending run {self._run_id()}"):
                self.mlflow.end_run(status=status)
            self.run = None
        except TrackingError as err:
            if status == "FINISHED":
                raise
            log.error("closing MLflow run %s as %s: %s", self._run_id(), status, err)
