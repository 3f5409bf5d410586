"""The registered model: an MLflow pyfunc that turns label maps into images.

Input (tensor-based signature, a dict of numpy arrays):

- ``label``: int64 [B, H, W], class indices (255 = dontcare when the model has that channel);
- ``instance``: int64 [B, H, W], instance ids; only in the signature (and then required) for
  models trained with instance maps.

Params: ``seed`` (long, default -1 = random; the style noise of models with a style encoder),
``batch_size`` (long, default 8). Output: uint8 [B, H, W, 3], the same H and W as the input
(:meth:`gaugan.synthesizer.Synthesizer.synthesize` does the work; this is a thin adapter).
Bad input (a class the model lacks, a missing key, instance and label maps of different shapes)
raises an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which ``mlflow models serve``
answers as HTTP 400 with the message (and no stack trace); docs/serving.md shows a request.

The artifact is the generator file itself (``artifacts={"generator": ...}``). The model is logged
as code (a three-line file that imports :class:`GauGANPyfunc`), not pickled, so loading needs this
project installed (the Docker image, or ``pip install .``).
``pip_requirements`` pins the running torch, numpy, pillow and mlflow, so nothing is resolved when
it loads. ``mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})`` picks the device
(default: CUDA when available); ``{"fold": False}`` keeps the spectral-norm hooks (by default they
are folded into plain weights: the same images, faster).

Importing this module imports mlflow (seconds): only the register stage and MLflow loads need it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from mlflow.pyfunc import PythonModel

from gaugan.config import size_hw
from gaugan.errors import InputError

ARTIFACT = "generator"

# The model is logged as code (MLflow "models from code"), not pickled: this file goes into the
# model's folder and builds the model from the installed package when it is loaded.
MODEL_CODE = """\
# GauGAN pyfunc model (MLflow models-from-code): the class lives in the gaugan-pipeline package.
from mlflow.models import set_model

from pipeline.registry.pyfunc import GauGANPyfunc

set_model(GauGANPyfunc())
"""


class GauGANPyfunc(PythonModel):
    # The input, a dict of arrays, is described by the explicit signature (signature_for), not by
    # type hints: this tells PythonModel not to wrap predict for type-hint validation (and warn).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from gaugan.synthesizer import Synthesizer

        config = context.model_config or {}
        self.synth = Synthesizer.from_checkpoint(
            context.artifacts[ARTIFACT], device=config.get("device", "auto"), fold=bool(config.get("fold", True))
        )

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from gaugan.errors import GauGANError

        try:
            return self._predict(model_input, params)
        except GauGANError as err:  # the client's mistake: a 400 naming it, not a 500 with a stack trace
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None

    def _predict(self, model_input, params):
        if isinstance(model_input, dict):
            if "label" not in model_input:
                raise InputError(f"the input needs a 'label' array; got keys {sorted(model_input)}")
            label, instance = np.asarray(model_input["label"]), model_input.get("instance")
        else:
            label, instance = np.asarray(model_input), None
        params = params or {}
        seed = params.get("seed")
        seed = None if seed is None or int(seed) < 0 else int(seed)
        instance = None if instance is None else np.asarray(instance)
        return self.synth.synthesize(label, instance, seed=seed, batch_size=int(params.get("batch_size") or 8))


def signature_for(config):
    """Tensor signature: named int64 inputs of any batch and size, uint8 images out, seed/batch_size params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs: list[ColSpec | TensorSpec] = [TensorSpec(np.dtype("int64"), (-1, -1, -1), "label")]
    if config.use_instance:
        inputs.append(TensorSpec(np.dtype("int64"), (-1, -1, -1), "instance"))
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([TensorSpec(np.dtype("uint8"), (-1, -1, -1, 3), "image")]),
        params=ParamSchema([ParamSpec("seed", "long", -1), ParamSpec("batch_size", "long", 8)]),
    )


def input_example_for(config) -> dict:
    """One all-zeros label map (class 0) at the training crop size; instance map all one instance."""
    h, w = size_hw(config.crop_size, config.aspect_ratio)
    example = {"label": np.zeros((1, h, w), dtype=np.int64)}
    if config.use_instance:
        example["instance"] = np.zeros((1, h, w), dtype=np.int64)
    return example


def pinned_requirements() -> list[str]:
    """The running versions, so an offline load never resolves anything (torch without +cpu/+cuXXX)."""
    import mlflow
    import PIL
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pillow=={PIL.__version__}",
    ]


def log_generator_model(generator_path: Path | str, config, name: str = "generator"):
    """Log the pyfunc model into the active run; returns mlflow's ModelInfo."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="gaugan-model-") as tmp:
        code = Path(tmp) / "gaugan_model.py"
        code.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts={ARTIFACT: str(generator_path)},
            signature=signature_for(config),
            input_example=input_example_for(config),
            pip_requirements=pinned_requirements(),
        )
