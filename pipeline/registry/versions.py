"""The MLflow model registry: registering a generator, deciding promotion, and finding models again.

One registered model per dataset (``register.model_name`` or ``gaugan-<dataset>``). Each new
version gets the alias ``challenger``; ``champion`` moves to it when ``register.promote`` says so,
or when there is no champion yet. By default (``if_significant``) a paired bootstrap over the
validation images must show it better on ``register.metric`` (``pipeline/registry/promotion.py``, which
scores the champion again when its evaluation was made on other terms); ``if_better`` compares the
two recorded numbers (lower is better unless ``register.greater_is_better``), and only when both
evaluations used the same validation split (``eval_split_id``: its samples and class table; the
training split may have grown), number of images, resolution and style source, and the same
feature extractor (FID, KID, precision, recall) or segmenter (mIoU, accuracy); when any differs,
or one side does not record it, the champion stays and the reason names each one.
Registry changes are undone when anything after the version's creation fails (aliases restored,
version deleted, a registered model created by that call deleted).
Registrations of one model running at the same time take turns (:func:`register_version`), so
exactly one champion results.

Lookups (:func:`load_pyfunc`; :func:`pipeline.serving.synthesize.load_model` over it also takes a local
generator file) accept ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or any other MLflow model
URI, and say what exists when a name, alias or version does not.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import MissingInputError, ModelNotFoundError, RegistryError
from pipeline.io import atomic_write_bytes, atomic_write_json, sha256_file
from pipeline.tracking import RunRef, mlflow_errors, resolve_tracking_uri, resume_run
from pipeline.versioning.gitstate import head

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
STATE_ARTIFACT = "train_state.pt"  # the training state's name under checkpoint/ (train.init_from reads it)
SEGMENTER_ARTIFACT = "segmenter.pt"  # the segmenter the version was scored with (train-segmenter continues it)
PENDING = "pending"  # validation_status of a version whose registration has not decided yet
# What two evaluations must share before any of their numbers are compared (tags written by the
# evaluate stage, pipeline/evaluation/comparable.py): the same validation split (samples and class
# table; not the whole dataset, whose training split grows), number of images, size, style source ...
COMPARABILITY_TAGS = ("eval_split_id", "eval_num_images", "eval_resolution", "style_source")
# ... and what produced the number: the feature extractor for FID-like numbers, the segmenter for
# segmentation scores.
BACKBONE_METRICS = (
    "fid",
    "fid_ci_low",
    "fid_ci_high",
    "fid_bootstrap_std",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
)
SEGMENTER_METRICS = ("miou", "accuracy", "miou_real", "accuracy_real", "miou_random", "accuracy_random")


def comparability_keys(metric: str) -> tuple[str, ...]:
    """The tags that must be equal for two values of ``metric`` to be compared."""
    if metric in BACKBONE_METRICS:
        return COMPARABILITY_TAGS + ("fid_backbone",)
    if metric in SEGMENTER_METRICS:
        return COMPARABILITY_TAGS + ("segmenter_id",)
    return COMPARABILITY_TAGS


def comparability_differences(
    mine: dict, theirs: dict, metric: str, theirs_label: str = "there", mine_label: str = "here"
) -> list[str]:
    """One sentence per tag that differs, or that one side does not record (then nothing can be said)."""
    found = []
    for key in comparability_keys(metric):
        a, b = mine.get(key), theirs.get(key)
        if not a or not b:
            found.append(f"{key} is not recorded {mine_label if not a else theirs_label}")
        elif a != b:
            found.append(f"{key} is {a!r} {mine_label} and {b!r} {theirs_label}")
    return found


# ------------------------------------------------------------------------------------------------
# registering


def read_metric(metrics_path: Path, metric: str) -> tuple[dict, float]:
    if not metrics_path.is_file():
        raise MissingInputError(f"{metrics_path}: no metrics; run the evaluate stage first")
    metrics = json.loads(metrics_path.read_text())
    numbers = sorted(k for k, v in metrics.items() if _is_number(v))
    if metric not in metrics:
        raise RegistryError(f"register.metric {metric!r} is not in {metrics_path}; its metrics: {', '.join(numbers)}")
    value = metrics[metric]
    if not _is_number(value) or not math.isfinite(float(value)):
        raise RegistryError(
            f"register.metric {metric!r} in {metrics_path} is {value!r}, not a finite number; "
            "the evaluation did not produce it (see the evaluate stage's log)"
        )
    return metrics, float(value)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def version_tags(metrics: dict, meta: dict, dataset: str, generator: Path, root: Path) -> dict[str, str]:
    """Provenance (commit, dataset and its id, the file's sha256, steps) and every number of metrics.json."""
    backbone = metrics.get("backbone")
    backbone_name = backbone.get("name") if isinstance(backbone, dict) else backbone
    tags = {
        "git_commit": meta.get("git_commit") or head(root) or "",
        # as the training run saw the workspace (pipeline.versioning.gitstate); a file without them says nothing
        "git_dirty": str(meta.get("git_dirty", "")),
        "git_diff_sha256": str(meta.get("git_diff_sha256", "")),
        "dataset": dataset,
        "dataset_id": meta.get("dataset_id") or "",
        "generator_sha256": sha256_file(generator),
        "training_steps": str(meta.get("steps", "")),
    }
    if backbone_name:
        tags["fid_backbone"] = str(backbone_name)
    if _is_number(metrics.get("height")) and _is_number(metrics.get("width")):
        tags["eval_resolution"] = f"{int(metrics['height'])}x{int(metrics['width'])}"
    comparability = metrics.get("comparability")
    if isinstance(comparability, dict):
        recorded = COMPARABILITY_TAGS + _PRODUCER_TAGS + ("eval_dataset_id",)  # the whole dataset: provenance
        tags.update({k: str(v) for k, v in comparability.items() if k in recorded})
    if "paper_comparable" in metrics:
        tags["paper_comparable"] = "true" if metrics["paper_comparable"] else "false"
    for key, value in metrics.items():
        if _is_number(value):
            tags[f"metric.{key}"] = repr(float(value)) if isinstance(value, float) else str(value)
    return {k: v for k, v in tags.items() if v != ""}


_PRODUCER_TAGS = ("fid_backbone", "segmenter_id")


def decide(
    value: float, tags: dict[str, str], champion, metric: str, greater_is_better: bool, policy: str = "if_better"
) -> tuple[bool, float | None, str]:
    """(promote, champion's value, reason). ``champion``: the current champion ModelVersion or None."""
    if champion is None:
        return policy != "never", None, "no champion yet" if policy != "never" else "register.promote is 'never'"
    raw = champion.tags.get(f"metric.{metric}")
    champion_value = float(raw) if raw is not None else None
    if policy in ("always", "never"):
        return policy == "always", champion_value, f"register.promote is {policy!r}"
    if champion_value is None or math.isnan(champion_value):
        return True, None, f"the champion (version {champion.version}) has no {metric!r} to compare with"
    differences = comparability_differences(
        tags, champion.tags, metric, f"for the champion (version {champion.version})"
    )
    if differences:
        return (
            False,
            champion_value,
            (
                f"{metric} not comparable with the champion's: {'; '.join(differences)}. The champion stays "
                "(register.promote: always moves it)"
            ),
        )
    better = value > champion_value if greater_is_better else value < champion_value
    direction = "higher" if greater_is_better else "lower"
    return (
        better,
        champion_value,
        (
            f"{metric} {value:.6g} is {'better' if better else 'not better'} than the champion's {champion_value:.6g} "
            f"(version {champion.version}, {direction} is better)"
        ),
    )


@dataclass
class Decision:
    """A registration's verdict: promote or not, the champion's value it was weighed against, why."""

    promoted: bool
    champion_value: float | None
    reason: str
    record: dict | None = None  # registration.json's "comparison" (register.promote: if_significant)
    tags: dict[str, str] = field(default_factory=dict)  # set on the new version with the verdict


def log_model(
    ref: RunRef, model_path: Path, config, state_path: Path | None = None, segmenter_path: Path | None = None
):
    """The pyfunc model, the raw generator file and (when they exist) the training-state file and the
    segmenter it was scored with into the training run (``checkpoint/<file>``,
    ``checkpoint/train_state.pt``, ``checkpoint/segmenter.pt``: a fine-tune of this version continues
    both); -> mlflow's ModelInfo."""
    import mlflow

    from pipeline.registry.pyfunc import log_generator_model

    with resume_run(ref):
        info = log_generator_model(model_path, config)
        mlflow.log_artifact(str(model_path), artifact_path="checkpoint")
        if state_path is not None and state_path.is_file():
            _log_as(state_path, STATE_ARTIFACT, "checkpoint")
        if segmenter_path is not None and segmenter_path.is_file():
            _log_as(segmenter_path, SEGMENTER_ARTIFACT, "checkpoint")
    return info


def _log_as(path: Path, name: str, folder: str) -> None:
    """``path`` logged as ``folder/name`` (copied under that name when it has another)."""
    import mlflow

    if path.name == name:
        mlflow.log_artifact(str(path), artifact_path=folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / name)
        mlflow.log_artifact(str(Path(tmp) / name), artifact_path=folder)


def register_version(
    ref: RunRef,
    name: str,
    info,
    tags: dict,
    value: float | None,
    settings,
    out: Path,
    judge: Callable[..., Decision] | None = None,
) -> dict:
    """A new version of ``name`` with its aliases, and ``out`` (registration.json); undone on failure.

    Registrations of one model that run at once (two ``register`` stages, on one machine or two)
    take turns in the order of their version numbers, which the registry hands out one at a time:
    each version is created ``validation_status=pending``, waits until no older version is still
    pending (:func:`wait_for_turn`), and only then compares itself with the champion of that moment.
    Every decision thus sees the one before it, and exactly one champion results, the one that the
    same registrations made one after the other would give. ``value`` None: a model registered
    without an evaluation (an imported reference checkpoint); then ``settings.promote`` must be
    'always' or 'never'. ``judge(champion)`` decides instead of :func:`decide` (``if_significant``,
    :class:`pipeline.registry.promotion.EvidenceJudge`); its slow work is done before the turn where it can be.
    """
    import mlflow

    client = mlflow.MlflowClient(ref.tracking_uri)
    created = _ensure_registered_model(client, ref.tracking_uri, name, tags["dataset"])
    version, before, previous_file = None, {}, out.read_bytes() if out.is_file() else None
    evaluated = f"{settings.metric} = {value:.6g}" if value is not None else "not evaluated"
    try:
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=ref.run_id,
            model_id=info.model_id,
            tags={**tags, "validation_status": PENDING},
            description=f"{evaluated}; waiting for its turn to be compared with the champion",
        )
        wait_for_turn(client, name, int(version.version), settings.wait_seconds)
        before = dict(client.get_registered_model(name).aliases or {})
        champion = client.get_model_version(name, before[CHAMPION]) if CHAMPION in before else None
        decision = (judge or _point_judge(value, tags, settings))(champion)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, version.version)
        client.update_model_version(name, version.version, description=f"{evaluated}; {decision.reason}")
        for key, tag in decision.tags.items():
            client.set_model_version_tag(name, version.version, key, tag)
        result = _record(ref, name, int(version.version), info, value, settings, champion, decision)
        atomic_write_json(out, result)
        # the last step: it ends this registration's turn
        status = CHAMPION if decision.promoted else CHALLENGER
        client.set_model_version_tag(name, version.version, "validation_status", status)
    except BaseException as err:
        _rollback(client, name, version, before, created)
        if previous_file is not None and out.is_file() and out.read_bytes() != previous_file:
            atomic_write_bytes(out, previous_file)
        raise RegistryError(f"registering {name!r} failed and the registry was restored: {err}") from err
    return result


def _point_judge(value: float | None, tags: dict, settings) -> Callable[..., Decision]:
    """:func:`decide` on the recorded numbers (register.promote: if_better, always, never)."""
    number = math.nan if value is None else value
    return lambda champion: Decision(
        *decide(number, tags, champion, settings.metric, settings.greater_is_better, settings.promote)
    )


def _record(ref: RunRef, name: str, version: int, info, value, settings, champion, decision: Decision) -> dict:
    """What registration.json says: the version, its aliases, the decision and why."""
    return {
        "name": name,
        "version": version,
        "promoted": decision.promoted,
        "aliases": [CHALLENGER, CHAMPION] if decision.promoted else [CHALLENGER],
        "metric": settings.metric,
        "greater_is_better": settings.greater_is_better,
        "promote": settings.promote,
        "value": value,
        "champion_value_before": decision.champion_value,
        "champion_version_before": int(champion.version) if champion is not None else None,
        "reason": decision.reason,
        "comparison": decision.record,
        "model_uri": f"models:/{name}/{version}",
        "logged_model_uri": info.model_uri,
        "run_id": ref.run_id,
        "tracking_uri": ref.tracking_uri,
    }


def _ensure_registered_model(client, tracking_uri: str, name: str, dataset: str) -> bool:
    """Create the registered model if it does not exist yet; True if this call created it."""
    from mlflow.exceptions import MlflowException

    with mlflow_errors(tracking_uri, f"reading the registered model {name!r}"):
        try:
            client.get_registered_model(name)
            return False
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            client.create_registered_model(
                name, tags={"dataset": dataset}, description=f"GauGAN generator for the {dataset} dataset"
            )
            return True
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return False  # a registration running at the same time created it first


def wait_for_turn(client, name: str, mine: int, wait_seconds: float) -> None:
    """Wait until no version of ``name`` older than ``mine`` is pending.

    A version pending for longer than ``wait_seconds`` (the registration that created it died) is
    passed over with a warning; delete it (or tag it) by hand to stop the warnings.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        now_ms = time.time() * 1000
        older = [
            v
            for v in client.search_model_versions(f"name='{name}'")
            if int(v.version) < mine and (v.tags or {}).get("validation_status") == PENDING
        ]
        alive = [v for v in older if now_ms - (v.creation_timestamp or 0) < wait_seconds * 1000]
        if not alive or time.monotonic() > deadline:
            if older:
                log.warning(
                    "%s: versions %s are still pending (their registrations died?); deciding without them",
                    name,
                    sorted(int(v.version) for v in older),
                )
            return
        time.sleep(0.5)


def _rollback(client, name: str, version, aliases_before: dict, created_model: bool) -> None:
    """Put back the aliases this call moved, delete the new version, and the registered model if this
    call made it and no other registration has put a version into it since."""
    steps: list[Callable[..., object]] = []
    if version is not None:
        for alias in (CHAMPION, CHALLENGER):
            if alias in aliases_before:
                steps.append(lambda a=alias: _restore_alias(client, name, a, str(version.version), aliases_before[a]))
        steps.append(lambda: client.delete_model_version(name, version.version))
    if created_model:
        steps.append(lambda: _delete_if_empty(client, name))
    for step in steps:
        try:
            step()
        except Exception as err:  # noqa: BLE001 - keep undoing what can be undone
            log.error("rollback of %s: %s", name, err)


def _delete_if_empty(client, name: str) -> None:
    if not client.search_model_versions(f"name='{name}'"):
        client.delete_registered_model(name)


def _restore_alias(client, name: str, alias: str, mine: str, before: str) -> None:
    """Point ``alias`` back at ``before`` if it still points at ``mine`` (another registration may have moved it)."""
    if str(dict(client.get_registered_model(name).aliases or {}).get(alias)) == mine:
        client.set_registered_model_alias(name, alias, before)


def tag_run(ref: RunRef, result: dict) -> None:
    """Name the registration on the training run (best effort: the registration is already complete)."""
    import mlflow

    from pipeline.errors import TrackingError

    try:
        with resume_run(ref):
            mlflow.set_tags(
                {
                    "registered_model": result["name"],
                    "registered_version": str(result["version"]),
                    "registered_as": CHAMPION if result["promoted"] else CHALLENGER,
                }
            )
    except TrackingError as err:
        log.warning("could not tag run %s with the registration: %s", ref.run_id, err)


# ------------------------------------------------------------------------------------------------
# finding models


def is_mlflow_uri(model: str) -> bool:
    return str(model).startswith(("models:/", "runs:/"))


def parse_registered(model: str) -> tuple[str, str | None, str | None] | None:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION).

    None for other URIs (``models:/m-<id>`` logged models, ``runs:/``).
    """
    if not model.startswith("models:/"):
        return None
    rest = model[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    return None


def check_registered(model: str, client) -> None:
    """Clear errors for a registered model, alias or version that does not exist, listing what does."""
    from mlflow.exceptions import MlflowException

    parsed = parse_registered(model)
    if parsed is None:
        return
    name, alias, version = parsed
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise ModelNotFoundError(
            f"{model}: no registered model {name!r} in {client.tracking_uri}; registered models: "
            f"{', '.join(names) if names else 'none (run the register stage)'}"
        ) from None
    aliases = dict(registered.aliases or {})
    listing = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
    if alias is not None and alias not in aliases:
        raise ModelNotFoundError(f"{model}: {name!r} has no alias {alias!r}; its aliases: {listing}")
    if version is not None:
        try:
            client.get_model_version(name, version)
        except MlflowException:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            raise ModelNotFoundError(
                f"{model}: {name!r} has no version {version!r}; versions: {versions or 'none'}; aliases: {listing}"
            ) from None


def registered_version(model: str, client):
    """The ModelVersion that ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names now (clear errors
    from :func:`check_registered` for what does not exist)."""
    parsed = parse_registered(model)
    if parsed is None:
        raise ModelNotFoundError(
            f"{model!r}: not a registered version; give models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    check_registered(model, client)
    name, alias, version = parsed
    return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))


def load_pyfunc(model: str, tracking_uri: str | None = None):
    """Load an MLflow model URI through its pyfunc, with clear errors for what does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    with mlflow_errors(uri, f"looking up {model}"):
        check_registered(model, mlflow.MlflowClient(uri))
    try:
        return mlflow.pyfunc.load_model(model)
    except MlflowException as err:
        raise ModelNotFoundError(f"cannot load {model} from {uri}: {err.message}") from None
