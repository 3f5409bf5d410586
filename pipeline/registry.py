"""The register stage: log the generator as an MLflow model, register it, promote it if it is better.

One registered model per dataset (``register.model_name`` or ``gaugan-<dataset>``). Every new
version gets the alias ``challenger`` and tags (git commit, data version, metrics, FID backbone);
it takes the alias ``champion`` only when it beats the current champion on ``register.metric``.
If anything fails after the version was created, the version is deleted again, so a failed
stage leaves the registry as it was.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline.io import atomic_write_json
from pipeline.params import Params
from pipeline.tracking import read_run_ref


class RegistryError(RuntimeError):
    pass


def _is_better(value: float, champion: float | None, greater_is_better: bool) -> bool:
    if champion is None or math.isnan(champion):
        return True
    return value > champion if greater_is_better else value < champion


def run_register(params: Params, root: Path | str = ".") -> dict:
    import mlflow
    import torch
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import Schema, TensorSpec

    from gaugan.checkpoint import load_generator
    from pipeline.serving import GauGANPyfunc

    root = Path(root)
    settings = params.registry
    model_path = root / params.train.model_out
    metrics_path = root / params.evaluate.out_dir / "metrics.json"
    ref = read_run_ref(root / params.train.out_dir / "run.json")
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: no metrics; run the evaluate stage first")
    metrics = json.loads(metrics_path.read_text())
    if settings.metric not in metrics or not isinstance(metrics[settings.metric], (int, float)):
        raise RegistryError(f"register.metric {settings.metric!r} is not a number in {metrics_path}; "
                            f"available: {sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}")
    value = float(metrics[settings.metric])
    loaded = load_generator(model_path, "cpu")
    dataset = loaded.classes.get("dataset", "model")
    name = settings.model_name or f"gaugan-{dataset}"

    h, w = max(1, round(loaded.config.crop_size / loaded.config.aspect_ratio)), loaded.config.crop_size
    example = {"label": np.zeros((1, h, w), dtype=np.int64)}
    if loaded.config.use_instance:
        example["instance"] = np.zeros((1, h, w), dtype=np.int64)
    # any batch size and any image size (divisible by 2**upsamplings): -1 in every free dimension
    inputs = Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1), name) for name in example])
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    params_schema = infer_signature(example, params={"seed": -1}).params
    signature = ModelSignature(inputs=inputs, outputs=outputs, params=params_schema)

    mlflow.set_tracking_uri(ref.tracking_uri)
    client = mlflow.MlflowClient(ref.tracking_uri)
    with mlflow.start_run(run_id=ref.run_id):
        info = mlflow.pyfunc.log_model(
            name="generator",
            python_model=GauGANPyfunc(),
            artifacts={"generator": str(model_path)},
            signature=signature,
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                              f"mlflow=={mlflow.__version__}"],
        )
        mlflow.log_artifact(str(model_path), artifact_path="checkpoint")

    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=f"GauGAN generator for the {dataset} dataset")
    champion_value = None
    try:
        champion = client.get_model_version_by_alias(name, "champion")
        tag = champion.tags.get(f"metric.{settings.metric}")
        champion_value = float(tag) if tag is not None else None
    except mlflow.exceptions.MlflowException:
        champion = None

    version = client.create_model_version(name, source=info.model_uri, run_id=ref.run_id)
    try:
        tags = {
            "git_commit": loaded.meta.get("git_commit") or "",
            "data_version": loaded.meta.get("data_version") or "",
            "dataset": dataset,
            "fid_backbone": str(metrics.get("backbone", {}).get("name", "") if isinstance(metrics.get("backbone"), dict)
                                else metrics.get("backbone", "")),
            **{f"metric.{k}": str(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        for key, val in tags.items():
            client.set_model_version_tag(name, version.version, key, val)
        client.set_registered_model_alias(name, "challenger", version.version)
        promoted = _is_better(value, champion_value, settings.greater_is_better)
        if promoted:
            client.set_registered_model_alias(name, "champion", version.version)
        client.set_model_version_tag(name, version.version, "validation_status", "champion" if promoted else "challenger")
    except BaseException:
        client.delete_model_version(name, version.version)
        raise
    result = {
        "name": name,
        "version": str(version.version),
        "aliases": ["challenger", "champion"] if promoted else ["challenger"],
        "promoted": promoted,
        "metric": settings.metric,
        "value": value,
        "champion_value_before": champion_value,
        "model_uri": f"models:/{name}/{version.version}",
        "run_id": ref.run_id,
    }
    atomic_write_json(root / settings.out, result)
    with mlflow.start_run(run_id=ref.run_id):
        mlflow.set_tags({"registered_model": name, "registered_version": str(version.version),
                         "champion": str(promoted).lower()})
    return result
