"""``gaugan-pipeline synthesize``: one label map PNG in, one image PNG out, with a registered model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.io import atomic_path


def _read_map(path: Path) -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: label/instance map not found")
    with Image.open(path) as im:
        arr = np.array(im)  # raw indices: never convert through a palette
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel map of class indices, got shape {arr.shape}")
    return arr.astype(np.int64)


def _load_registered(model: str, tracking_uri: str | None):
    import mlflow

    from pipeline.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        return mlflow.pyfunc.load_model(model)
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"cannot load {model}: {err}") from None


def synthesize(model: str, label_path: Path | str, out_path: Path | str, instance_path: Path | str | None = None,
               seed: int | None = None, tracking_uri: str | None = None) -> Path:
    label = _read_map(Path(label_path))
    instance = _read_map(Path(instance_path)) if instance_path else None
    if model.startswith("models:/") or model.startswith("runs:/"):
        pyfunc = _load_registered(model, tracking_uri)
        inputs = {"label": label[None]}
        expects_instance = "instance" in pyfunc.metadata.get_input_schema().input_names()
        if instance is not None or expects_instance:
            # without an instance map, class regions serve as instances (their boundaries as edges)
            inputs["instance"] = (instance if instance is not None else label)[None]
        image = pyfunc.predict(inputs, params={"seed": -1 if seed is None else int(seed)})[0]
    else:
        from gaugan.synthesizer import Synthesizer

        synth = Synthesizer.from_checkpoint(model)
        if synth.config.use_instance and instance is None:
            instance = label
        image = synth.to_uint8(synth(label[None], instances=None if instance is None else instance[None], seed=seed))[0]
    out = Path(out_path)
    with atomic_path(out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return out
