"""``gaugan-pipeline reproduce models:/NAME/VERSION``: a registered version made again from its git ref.

The version's tags name the commit that reproduces it: ``git_ref`` (set by a retraining's commit),
else ``git_commit`` when the workspace it was made in was clean (``git_dirty`` false). The steps are
the plain ones a person would type, in a fresh clone of the project:

1. ``git clone`` the project into a work folder and check out that ref;
2. ``dvc pull`` from the default DVC remote (or, with none, ``dvc checkout`` from the project's own
   cache): the raw data, the prepared data, the parent, the models;
3. ``dvc repro resolve-parent`` (it asks the registry for the pinned parent) and ``dvc status``: the
   pipeline is up to date when no other stage would run;
4. with ``force``: ``dvc repro --force --single-item train``, then the retrained generator's weights
   are compared with the registered generator's (the pulled ``train.model_out``, checked against the
   version's ``generator_sha256``). On CPU with ``train.deterministic`` they are bit-identical; on
   GPU, bench/gpu_paths_check.py states the
   tolerance. The forced run uses the training run's thread count (the generator file records it)
   and logs to a scratch MLflow store in the work folder, not to the team's.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import sha256_file
from pipeline.versioning.data_versions import dvc, last_json
from pipeline.versioning.gitstate import git

ALWAYS_CHANGED = ("resolve-parent",)  # stages DVC runs every time (always_changed): not staleness


class ReproduceError(PipelineError):
    """A registered version that cannot be reproduced from git (no clean ref), or a step that failed."""


def version_ref(tags: dict[str, str], what: str) -> str:
    """The commit that reproduces a version, from its tags; refuses a dirty one without a ``git_ref``."""
    if tags.get("git_ref"):
        return tags["git_ref"]
    commit = tags.get("git_commit")
    if commit and tags.get("git_dirty") != "true":
        return commit
    if commit:
        raise ReproduceError(
            f"{what} was made in a workspace with uncommitted changes (commit {commit[:12]}, changed files' sha256 "
            f"{tags.get('git_diff_sha256', '?')[:12]}) and no retraining committed it: it has no git ref to "
            "reproduce from. Register versions from a clean checkout (or with `gaugan-pipeline flow retrain`)"
        )
    raise ReproduceError(f"{what} records no git commit (it was not registered from a git checkout)")


def weights_sha256(path: Path) -> str:
    """sha256 over a generator file's weights (G, and E when present), by name, dtype, shape and bytes:
    two files from equal training agree here even though their run ids (meta) differ."""
    import torch

    from gaugan.checkpoint import read_model_file

    payload = read_model_file(path)
    digest = hashlib.sha256()
    for part in ("G", "E"):
        state = payload.get(part) or {}
        for key in sorted(state):
            tensor = state[key]
            if isinstance(tensor, torch.Tensor):
                t = tensor.detach().cpu().contiguous()
                digest.update(f"{part}.{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
                digest.update(
                    t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
                )
    return digest.hexdigest()


def _registered_version(model_uri: str, tracking_uri: str):
    import mlflow

    from pipeline.registry.versions import registered_version
    from pipeline.tracking import mlflow_errors

    with mlflow_errors(tracking_uri, f"reading {model_uri}"):
        return registered_version(model_uri, mlflow.MlflowClient(tracking_uri))


def reproduce(model_uri: str, repo: Path, workdir: Path | None = None, force: bool = False) -> dict:
    """The steps of the module's docstring; -> what was found (``up_to_date``, ``stale``, and with
    ``force`` the weights' sha256 of both generators and ``identical``)."""
    from pipeline.params import load_params
    from pipeline.tracking import resolve_tracking_uri

    repo = Path(repo).resolve()
    tracking_uri = resolve_tracking_uri(load_params(repo / "params.yaml").mlflow.tracking_uri, repo)
    mv = _registered_version(model_uri, tracking_uri)
    tags = dict(mv.tags or {})
    what = f"models:/{mv.name}/{mv.version}"
    ref = version_ref(tags, what)
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"reproduce-{mv.name}-{mv.version}-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise ReproduceError(f"{workdir} is not empty: give an empty or new folder (--workdir)")
    git(repo, "clone", "-q", "--no-checkout", str(repo), str(workdir), timeout=600)
    try:
        git(workdir, "checkout", "-q", ref)
    except PipelineError as err:
        raise ReproduceError(
            f"{what}: its git ref {ref[:12]} is not in {repo} ({err}); fetch it from the team's remote"
        ) from err
    report: dict = {"model": what, "ref": ref, "workdir": str(workdir)}
    print(f"{what}: {ref[:12]} checked out in {workdir}")

    report["data_from"] = _fetch_data(workdir, repo)
    print(f"data and models: from {report['data_from']}")

    params = load_params(workdir / "params.yaml")
    registered = workdir / params.train.model_out
    if not registered.is_file():
        raise ReproduceError(
            f"{what}: {params.train.model_out} is not in the DVC remote or cache at {ref[:12]} (dvc push it)"
        )
    expected = tags.get("generator_sha256")
    if expected and sha256_file(registered) != expected:
        raise ReproduceError(
            f"{what}: the generator at {ref[:12]} ({params.train.model_out}) is not the registered one "
            f"(sha256 {sha256_file(registered)[:12]} vs the version's {expected[:12]})"
        )
    project = {"MLFLOW_TRACKING_URI": tracking_uri}  # the clone's stages ask the project's registry
    dvc(workdir, "repro", "-q", *ALWAYS_CHANGED, env=project)
    status = _status(workdir, project)
    stale = {stage: reasons for stage, reasons in status.items() if stage not in ALWAYS_CHANGED}
    report.update(up_to_date=not stale, stale=stale)
    print("dvc repro: up to date" if not stale else f"dvc repro would run: {', '.join(stale)} ({stale})")
    if force:
        report.update(_retrain_and_compare(workdir, registered, what))
    return report


def _retrain_and_compare(workdir: Path, registered: Path, what: str) -> dict:
    """``dvc repro --force --single-item train`` (a scratch MLflow store); -> both weights' sha256, identical."""
    from gaugan.checkpoint import read_model_file

    kept = workdir.parent / f".{workdir.name}-registered-generator.pt"
    shutil.copyfile(registered, kept)
    threads = (read_model_file(registered).get("meta") or {}).get("torch_threads")
    try:
        proc = _repro_train(workdir, f"sqlite:///{workdir / 'reproduce-mlflow.db'}", threads)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise ReproduceError(f"retraining {what} failed:\n{tail}")
        before, after = weights_sha256(kept), weights_sha256(registered)
    finally:
        kept.unlink(missing_ok=True)
    print(
        f"retrained generator weights sha256 {after[:16]}, registered {before[:16]}: "
        f"{'identical' if before == after else 'DIFFERENT'}"
    )
    return {"registered_weights_sha256": before, "retrained_weights_sha256": after, "identical": before == after}


def _fetch_data(workdir: Path, repo: Path) -> str:
    """``dvc pull`` from the default remote, else ``dvc checkout`` from the project's cache; -> where from."""
    remote = dvc(workdir, "remote", "default", check=False).stdout.strip()
    if remote:
        dvc(workdir, "pull", "-q")
        return f"DVC remote {remote!r}"
    dvc(workdir, "cache", "dir", "--local", str(repo / ".dvc" / "cache"))
    dvc(workdir, "checkout", "-q")
    return f"the project's DVC cache ({repo / '.dvc' / 'cache'}): no DVC remote is set"


def _status(workdir: Path, env: dict[str, str]) -> dict:
    return last_json(dvc(workdir, "status", "--json", env=env).stdout)


def _repro_train(workdir: Path, tracking_uri: str, threads: int | None):
    """The forced train stage, with the registered run's CPU thread count (float sums depend on it)."""
    import subprocess
    import sys

    from pipeline.versioning.tools import tool_env

    env = {**tool_env(workdir), "MLFLOW_TRACKING_URI": tracking_uri}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "train"]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
