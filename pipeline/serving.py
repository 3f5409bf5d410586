"""The registered model: an MLflow pyfunc that turns label maps into images.

Input: a dict with ``label`` (int [B,H,W], class indices, 255 = dontcare) and, for models trained
with instance maps, ``instance`` (int [B,H,W]); when ``instance`` is absent the label map serves
as the instance map (boundaries between classes). Params: ``seed`` (multimodal models).
Output: uint8 images [B,H,W,3].
"""

from __future__ import annotations

import numpy as np

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; this keeps the import cheap to reason about
    PythonModel = object


def _unpack(model_input) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(model_input, dict):
        label = np.asarray(model_input["label"])
        instance = model_input.get("instance")
        return label, (np.asarray(instance) if instance is not None else None)
    return np.asarray(model_input), None


class GauGANPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from gaugan.synthesizer import Synthesizer

        self.synth = Synthesizer.from_checkpoint(context.artifacts["generator"], device="auto")

    def predict(self, context, model_input, params=None):
        label, instance = _unpack(model_input)
        if label.ndim == 2:
            label = label[None]
        if self.synth.config.use_instance and instance is None:
            instance = label
        seed = (params or {}).get("seed")
        images = self.synth(label.astype(np.int64), instances=instance, seed=None if seed is None or seed < 0 else int(seed))
        return self.synth.to_uint8(images)
