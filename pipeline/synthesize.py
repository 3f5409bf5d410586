"""``gaugan-pipeline synthesize``: a label map PNG in, an image PNG out.

The model is a registered one (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``), any other MLflow
model URI (``runs:/RUN/generator``, ``models:/m-...``), or a local generator file (``models/generator.pt``).
Registered models are loaded through their MLflow pyfunc (:mod:`pipeline.serving`), local files
through :class:`gaugan.synthesizer.Synthesizer`; both use :func:`generate`, so they give the same
pixels for the same inputs and seed.

Label maps are read as raw class indices (``np.array(Image.open(path))``, never converted through
a palette). The image has the label map's size: a map whose sides are not multiples of the
generator's total upsampling factor (32 with ``num_upsampling_layers: normal``), or any map given to
a model with a style encoder (its first feature map has a fixed size), is resized to fit with
nearest-neighbour sampling, and the image is resized back (bilinear, antialiased).

mlflow is imported only for MLflow URIs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path

log = logging.getLogger(__name__)

DONTCARE = 255


class SynthesizeError(ValueError):
    """A problem with the model reference or the inputs; the message says what to change."""


# ------------------------------------------------------------------------------------------------
# inputs


def read_map(path: Path | str, what: str = "label map") -> np.ndarray:
    """A single-channel PNG of raw indices -> int64 [H, W]."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    with Image.open(path) as im:
        arr = np.array(im)  # raw values: a palette ("P") image gives its indices, never colours
    if arr.ndim != 2:
        raise SynthesizeError(
            f"{path}: a {what} must have one channel of indices (mode L, P, I or I;16), got shape {arr.shape} "
            f"(mode {im.mode}); colour-coded maps must be converted to class indices first"
        )
    return arr.astype(np.int64)


def check_labels(labels: np.ndarray, label_nc: int, contain_dontcare_label: bool, classes: dict | None = None) -> None:
    """Refuse label values the generator has no channel for, naming them and the valid range."""
    values = np.unique(labels)
    ok = (values >= 0) & (values < label_nc)
    if contain_dontcare_label:
        ok |= values == DONTCARE
    bad = values[~ok]
    if bad.size:
        dataset = (classes or {}).get("dataset")
        table = f"the class table of {dataset!r}" if dataset else "the model's class table"
        allowed = f"0..{label_nc - 1}" + (f" and {DONTCARE} (dontcare)" if contain_dontcare_label else "")
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise SynthesizeError(f"label values {shown} are outside {table}: allowed {allowed}")


def model_size(config, height: int, width: int) -> tuple[int, int]:
    """The (H, W) the generator is run at for a label map of (height, width)."""
    scale = 2**config.num_upsamplings
    if config.use_vae:  # the first feature map comes from z, with the size fixed at training time
        sh, sw = config.latent_hw
        return sh * scale, sw * scale
    return max(scale, round(height / scale) * scale), max(scale, round(width / scale) * scale)


def generate(
    synth, labels: np.ndarray, instances: np.ndarray | None = None, seed: int | None = None, batch_size: int = 8
) -> np.ndarray:
    """Label maps int [B,H,W] (+ instance maps) -> uint8 images [B,H,W,3] of the same size.

    ``synth`` is a :class:`gaugan.synthesizer.Synthesizer`.
    """
    import torch
    import torch.nn.functional as F

    cfg = synth.config
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise SynthesizeError(f"label maps must be [B,H,W] or [H,W], got shape {labels.shape}")
    check_labels(labels, cfg.label_nc, cfg.contain_dontcare_label, synth.classes)
    if cfg.use_instance:
        if instances is None:
            raise SynthesizeError("this model was trained with instance maps: pass an instance map per label map")
        instances = np.asarray(instances)
        if instances.ndim == 2:
            instances = instances[None]
        if instances.shape != labels.shape:
            raise SynthesizeError(f"instance maps {instances.shape} and label maps {labels.shape} differ in shape")
    else:
        instances = None
    b, h, w = labels.shape
    mh, mw = model_size(cfg, h, w)
    lab = torch.from_numpy(labels.astype(np.int64))
    inst = torch.from_numpy(instances.astype(np.int64)) if instances is not None else None
    if (mh, mw) != (h, w):
        lab = F.interpolate(lab[:, None].float(), size=(mh, mw), mode="nearest").long()[:, 0]
        if inst is not None:
            inst = F.interpolate(inst[:, None].double(), size=(mh, mw), mode="nearest").long()[:, 0]
    images = synth(lab, instances=inst, seed=seed, batch_size=batch_size)
    if tuple(images.shape[-2:]) != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return synth.to_uint8(images)


# ------------------------------------------------------------------------------------------------
# models


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
    """Clear errors for a registered model, alias or version that does not exist."""
    from mlflow.exceptions import MlflowException

    parsed = parse_registered(model)
    if parsed is None:
        return
    name, alias, version = parsed
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise SynthesizeError(
            f"{model}: no registered model {name!r} in {client.tracking_uri}; registered models: "
            f"{', '.join(names) if names else 'none (run the register stage)'}"
        ) from None
    aliases = dict(registered.aliases or {})
    listing = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
    if alias is not None and alias not in aliases:
        raise SynthesizeError(f"{model}: {name!r} has no alias {alias!r}; its aliases: {listing}")
    if version is not None:
        try:
            client.get_model_version(name, version)
        except MlflowException:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            raise SynthesizeError(
                f"{model}: {name!r} has no version {version!r}; versions: {versions or 'none'}; aliases: {listing}"
            ) from None


def load_pyfunc(model: str, tracking_uri: str | None = None):
    """Load an MLflow model URI through its pyfunc, with clear errors for what does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    check_registered(model, mlflow.MlflowClient(uri))
    try:
        return mlflow.pyfunc.load_model(model)
    except MlflowException as err:
        raise SynthesizeError(f"cannot load {model} from {uri}: {err.message}") from None


def _uses_instances(pyfunc) -> bool:
    schema = pyfunc.metadata.get_input_schema()
    return schema is not None and schema.has_input_names() and "instance" in schema.input_names()


def synthesize(
    model: str,
    label_path: Path | str,
    out_path: Path | str,
    instance_path: Path | str | None = None,
    seed: int | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """Write the image generated from one label map (PNG, written atomically); returns ``out_path``.

    ``tracking_uri``: where registered models live; default ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///<cwd>/mlflow.db``. Models trained with instance maps use ``instance_path``; without
    one, the label map stands in for it (edges at class boundaries only), with a warning.
    """
    from PIL import Image

    label = read_map(label_path, "label map")
    instance = read_map(instance_path, "instance map") if instance_path else None
    if instance is not None and instance.shape != label.shape:
        raise SynthesizeError(
            f"{instance_path}: instance map {instance.shape} and label map {label.shape} differ in size"
        )

    if is_mlflow_uri(model):
        pyfunc = load_pyfunc(model, tracking_uri)
        inputs = {"label": label[None]}
        if _uses_instances(pyfunc):
            if instance is None:
                log.warning("%s was trained with instance maps and none was given: using the label map as one", model)
                instance = label
            inputs["instance"] = instance[None]
        image = pyfunc.predict(inputs, params={"seed": -1 if seed is None else int(seed)})[0]
    else:
        from gaugan.synthesizer import Synthesizer

        path = Path(model)
        if not path.is_file():
            raise SynthesizeError(
                f"{model}: not a generator file, and not an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION)"
            )
        synth = Synthesizer.from_checkpoint(path)
        if synth.config.use_instance and instance is None:
            log.warning("%s was trained with instance maps and none was given: using the label map as one", model)
            instance = label
        image = generate(synth, label[None], None if instance is None else instance[None], seed=seed)[0]

    out = Path(out_path)
    with atomic_path(out) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return out
