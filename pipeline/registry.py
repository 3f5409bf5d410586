"""The register stage: log the generator as an MLflow model, register it, promote it if it is better.

Reads ``train.model_out`` (the generator file), ``<evaluate.out_dir>/metrics.json`` and
``<train.out_dir>/run.json`` (the training run), then:

1. logs the pyfunc model (:mod:`pipeline.serving`) into the training run as ``generator``, and the
   raw generator file as the plain artifact ``checkpoint/<file>``;
2. creates a new version of the registered model (one per dataset: ``register.model_name`` or
   ``gaugan-<dataset>``) with tags: git commit, data version (hash of the prepared manifest, and the
   ``dvc.lock`` md5 of ``data.out`` when there is one), every number in metrics.json as
   ``metric.<key>``, the FID backbone and evaluation resolution, the generator's sha256;
3. points the alias ``challenger`` at it, and ``champion`` too when ``register.promote`` says so:
   by default when it beats the current champion on ``register.metric`` (lower is better unless
   ``register.greater_is_better``), or when there is no champion yet. FID/KID values computed with
   another feature extractor or at another resolution are not compared: the champion stays, and the
   reason is written down;
4. writes ``register.out`` (JSON: name, version, aliases, promoted, metric, value,
   champion_value_before, champion_version_before, reason, model_uri, run_id).

Registry changes are undone when anything after the version's creation fails (aliases restored,
version deleted, a registered model created by this call deleted), so a failed stage leaves the
registry as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

from pipeline.io import atomic_write_json
from pipeline.params import Params
from pipeline.tracking import git_commit

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# metrics whose values depend on the feature extractor and image size: compared only like for like
BACKBONE_METRICS = ("fid", "kid_mean", "kid_std")
COMPARABILITY_TAGS = ("fid_backbone", "eval_resolution")


class RegistryError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------
# inputs


def read_metric(metrics_path: Path, metric: str) -> tuple[dict, float]:
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: no metrics; run the evaluate stage first")
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


def version_tags(metrics: dict, meta: dict, generator: Path, root: Path, data_out: str) -> dict[str, str]:
    backbone = metrics.get("backbone")
    backbone_name = backbone.get("name") if isinstance(backbone, dict) else backbone
    tags = {
        "git_commit": meta.get("git_commit") or git_commit(root) or "",
        "data_version": meta.get("data_version") or "",
        "data_dvc_md5": dvc_lock_md5(root, data_out) or "",
        "generator_sha256": sha256(generator),
        "training_steps": str(meta.get("steps", "")),
    }
    if backbone_name:
        tags["fid_backbone"] = str(backbone_name)
    if _is_number(metrics.get("height")) and _is_number(metrics.get("width")):
        tags["eval_resolution"] = f"{int(metrics['height'])}x{int(metrics['width'])}"
    for key, value in metrics.items():
        if _is_number(value):
            tags[f"metric.{key}"] = repr(float(value)) if isinstance(value, float) else str(value)
    return {k: v for k, v in tags.items() if v != ""}


def dvc_lock_md5(root: Path, data_out: str) -> str | None:
    """The md5 that ``dvc.lock`` records for the prepared dataset (an output of any stage)."""
    import yaml

    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError:
        return None
    want = Path(data_out).as_posix().rstrip("/")
    for stage in stages.values():
        for out in (stage or {}).get("outs", []) or []:
            if str(out.get("path", "")).rstrip("/") == want:
                return out.get("md5")
    return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# the decision


def decide(
    value: float, tags: dict[str, str], champion, metric: str, greater_is_better: bool, policy: str = "if_better"
) -> tuple[bool, float | None, str]:
    """(promote, champion's value, reason). ``champion``: the current champion ModelVersion or None."""
    if champion is None:
        return policy != "never", None, "no champion yet" if policy != "never" else "register.promote is 'never'"
    raw = champion.tags.get(f"metric.{metric}")
    champion_value = float(raw) if raw is not None else None
    if policy == "always":
        return True, champion_value, "register.promote is 'always'"
    if policy == "never":
        return False, champion_value, "register.promote is 'never'"
    if champion_value is None or math.isnan(champion_value):
        return True, None, f"the champion (version {champion.version}) has no {metric!r} to compare with"
    if metric in BACKBONE_METRICS:
        for key in COMPARABILITY_TAGS:
            mine, theirs = tags.get(key), champion.tags.get(key)
            if mine and theirs and mine != theirs:
                return (
                    False,
                    champion_value,
                    (
                        f"{metric} not comparable: {key} is {mine!r} here and {theirs!r} for the champion "
                        f"(version {champion.version}); the champion stays (register.promote: always moves it)"
                    ),
                )
    better = value > champion_value if greater_is_better else value < champion_value
    word = "better" if better else "not better"
    return (
        better,
        champion_value,
        f"{metric} {value:.6g} is {word} than the champion's {champion_value:.6g} "
        f"(version {champion.version}, {'higher' if greater_is_better else 'lower'} is better)",
    )


# ------------------------------------------------------------------------------------------------
# the stage


def run_register(params: Params, root: Path | str = Path(".")) -> dict:
    import mlflow
    from mlflow.exceptions import MlflowException

    from gaugan.checkpoint import load_generator
    from pipeline.serving import log_generator_model
    from pipeline.tracking import read_run_ref, resume_run

    root = Path(root)
    settings = params.registry
    model_path = root / params.train.model_out
    metrics_path = root / params.evaluate.out_dir / "metrics.json"
    ref = read_run_ref(root / params.train.out_dir / "run.json")
    metrics, value = read_metric(metrics_path, settings.metric)
    loaded = load_generator(model_path, "cpu")
    dataset = loaded.classes.get("dataset") or "model"
    name = settings.model_name or f"gaugan-{dataset}"
    tags = version_tags(metrics, loaded.meta, model_path, root, params.data.out)
    tags["dataset"] = str(dataset)
    if loaded.meta.get("run_id") and loaded.meta["run_id"] != ref.run_id:
        log.warning(
            "%s was trained in run %s but %s names run %s; registering into the latter",
            model_path,
            loaded.meta["run_id"],
            params.train.out_dir,
            ref.run_id,
        )

    # 1. the model into the training run (artifacts only: the registry is not touched yet)
    with resume_run(ref):
        info = log_generator_model(model_path, loaded.config)
        mlflow.log_artifact(str(model_path), artifact_path="checkpoint")

    # 2-4. the registry, undone on failure
    client = mlflow.MlflowClient(ref.tracking_uri)
    created_model = False
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        registered = client.create_registered_model(
            name, tags={"dataset": str(dataset)}, description=f"GauGAN generator for the {dataset} dataset"
        )
        created_model = True
    before = dict(registered.aliases or {})
    champion = client.get_model_version(name, before[CHAMPION]) if CHAMPION in before else None
    promoted, champion_value, reason = decide(
        value, tags, champion, settings.metric, settings.greater_is_better, settings.promote
    )
    tags["validation_status"] = CHAMPION if promoted else CHALLENGER
    version = None
    try:
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=ref.run_id,
            tags=tags,
            model_id=info.model_id,
            description=f"{settings.metric} = {value:.6g}; {reason}",
        )
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version.version)
        result = {
            "name": name,
            "version": int(version.version),
            "aliases": [CHALLENGER, CHAMPION] if promoted else [CHALLENGER],
            "promoted": promoted,
            "metric": settings.metric,
            "greater_is_better": settings.greater_is_better,
            "value": value,
            "champion_value_before": champion_value,
            "champion_version_before": int(champion.version) if champion is not None else None,
            "reason": reason,
            "model_uri": f"models:/{name}/{version.version}",
            "logged_model_uri": info.model_uri,
            "run_id": ref.run_id,
            "tracking_uri": ref.tracking_uri,
        }
        atomic_write_json(root / settings.out, result)
    except BaseException as err:
        _rollback(client, name, version, before, created_model)
        raise RegistryError(f"registering {name!r} failed and the registry was restored: {err}") from err

    try:
        with resume_run(ref):
            mlflow.set_tags(
                {
                    "registered_model": name,
                    "registered_version": str(version.version),
                    "registered_as": CHAMPION if promoted else CHALLENGER,
                }
            )
    except MlflowException as err:  # the registration itself is complete and consistent
        log.warning("could not tag run %s with the registration: %s", ref.run_id, err)
    log.info("%s version %s: %s", name, version.version, reason)
    return result


def _rollback(client, name: str, version, aliases_before: dict, created_model: bool) -> None:
    """Put aliases back, delete the new version (and the registered model if this call made it)."""
    steps = []
    if version is not None:
        for alias in (CHAMPION, CHALLENGER):
            if alias in aliases_before:
                steps.append(lambda a=alias: client.set_registered_model_alias(name, a, aliases_before[a]))
        steps.append(lambda: client.delete_model_version(name, version.version))
    if created_model:
        steps.append(lambda: client.delete_registered_model(name))
    for step in steps:
        try:
            step()
        except Exception as err:  # noqa: BLE001 - keep undoing what can be undone
            log.error("rollback of %s: %s", name, err)
