"""What the app can serve: the registry's models (names, aliases, versions, their tags) and the loaded ones.

Models are loaded once (spectral norm folded, :func:`pipeline.serving.synthesize.load_model`) and kept in
a small least-recently-used cache keyed by URI. The page gets each model's class table with the
prepared dataset's class frequencies (``<data.out>/stats.json``) when that dataset has the same
classes as the model; otherwise classes keep their index order.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from gaugan.errors import InputError
from pipeline.errors import ModelNotFoundError
from pipeline.registry.versions import CHAMPION, check_registered, parse_registered
from pipeline.tracking import mlflow_errors

log = logging.getLogger(__name__)

# version tag -> the field the page shows (tags written by the register stage)
SHOWN_TAGS = {
    "dataset": "dataset",
    "netG": "netG",  # the generator family (versions registered before it existed: none)
    "eval_resolution": "size",
    "training_steps": "training_steps",
    "metric.fid": "fid",
    "metric.miou": "miou",
}


def model_uri(name: str, ref: str) -> str:
    """``models:/NAME/VERSION`` for a number, ``models:/NAME@ALIAS`` otherwise."""
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


class Catalog:
    """The registry at ``tracking_uri`` plus ``local_model`` (a generator file given with --model)."""

    def __init__(
        self, tracking_uri: str, model: str | None, device: str, cache_size: int, data_root: Path | None = None
    ):
        self.tracking_uri = tracking_uri
        self.model = model
        self.device = device
        self.cache_size = cache_size
        self.data_root = data_root
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the registry
    def _client(self):
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)

    def list_models(self) -> list[dict]:
        """Every registered model: its aliases and versions (newest first) with their tags."""
        client = self._client()
        found = []
        with mlflow_errors(self.tracking_uri, "listing the registered models"):
            for registered in sorted(client.search_registered_models(), key=lambda m: m.name):
                aliases = {a: str(v) for a, v in (registered.aliases or {}).items()}
                versions = client.search_model_versions(f"name='{registered.name}'")
                found.append(
                    {
                        "name": registered.name,
                        "aliases": aliases,
                        "versions": [
                            self._version(registered.name, v, aliases)
                            for v in sorted(versions, key=lambda v: -int(v.version))
                        ],
                    }
                )
        return found

    @staticmethod
    def _version(name: str, version, aliases: dict[str, str]) -> dict:
        tags = version.tags or {}
        shown: dict[str, object] = {field: tags.get(tag) for tag, field in SHOWN_TAGS.items()}
        for key in ("fid", "miou", "training_steps"):
            try:
                shown[key] = float(shown[key]) if shown[key] not in (None, "") else None  # type: ignore[arg-type]
            except ValueError:
                shown[key] = None
        return {
            "version": str(version.version),
            "uri": f"models:/{name}/{version.version}",
            "aliases": sorted(a for a, v in aliases.items() if v == str(version.version)),
            **shown,
        }

    def default_model(self, models: list[dict] | None = None) -> str | None:
        """--model (app.model), else the first registered model's champion (else its newest version)."""
        if self.model:
            return self.model
        for entry in models if models is not None else self.list_models():
            if CHAMPION in entry["aliases"]:
                return model_uri(entry["name"], CHAMPION)
            if entry["versions"]:
                return entry["versions"][0]["uri"]
        return None

    # ------------------------------------------------------------------ loaded models
    def check_uri(self, uri: str | None) -> str:
        """The URI a request may use: a registered model (by alias or version) or the app's own --model."""
        uri = uri or self.default_model()
        if uri is None:
            raise ModelNotFoundError(
                f"no model registered at {self.tracking_uri} and none given: run `make demo`, or start the "
                "app with --model models:/NAME@ALIAS (or a generator file)"
            )
        if uri != self.model and parse_registered(uri) is None:
            raise InputError(f"model {uri!r}: give a registered model, models:/NAME@ALIAS or models:/NAME/VERSION")
        if uri != self.model:
            with mlflow_errors(self.tracking_uri, f"looking up {uri}"):
                check_registered(uri, self._client())
        return uri

    def get(self, uri: str | None):
        """The Synthesizer of ``uri`` (checked, loaded once, the least recently used dropped)."""
        from pipeline.serving.synthesize import load_model

        uri = self.check_uri(uri)
        with self._lock:
            if uri in self._cache:
                self._cache.move_to_end(uri)
                return uri, self._cache[uri]
            synth = load_model(uri, self.tracking_uri, self.device)
            self._cache[uri] = synth
            while len(self._cache) > self.cache_size:
                dropped, _ = self._cache.popitem(last=False)
                log.info("model cache: dropped %s", dropped)
            return uri, synth

    def describe(self, uri: str | None) -> dict:
        """What the page needs of a model: its size, class table (most frequent first), style support."""
        uri, synth = self.get(uri)
        cfg, classes = synth.config, synth.classes
        h, w = synth.training_size
        names = list(classes.names) if classes else [f"class {i}" for i in range(cfg.label_nc)]
        colors = [list(c) for c in classes.colors] if classes else [[0, 0, 0]] * cfg.label_nc
        freq = self.frequencies(names)
        order = sorted(range(len(names)), key=lambda i: (-(freq or {}).get(i, 0.0), i))
        return {
            "uri": uri,
            "dataset": classes.dataset if classes else None,
            "height": h,
            "width": w,
            "netG": cfg.netG,  # the generator family: spade | pix2pixhd
            "label_nc": cfg.label_nc,
            "dontcare": bool(cfg.contain_dontcare_label),
            "use_instance": bool(cfg.use_instance),
            "style": bool(cfg.use_vae and synth.netE is not None),
            "multimodal": bool(cfg.use_vae),
            "training_steps": synth.meta.get("steps"),
            "classes": [
                {"index": i, "name": n, "color": c, "frequency": (freq or {}).get(i)}
                for i, (n, c) in enumerate(zip(names, colors, strict=True))
            ],
            "order": order,
            "frequency_source": str(Path(self.data_root or ".") / "stats.json") if freq else None,
        }

    def frequencies(self, names: list[str]) -> dict[int, float] | None:
        """Class -> pixel fraction over the prepared dataset's splits, when its classes are ``names``."""
        if self.data_root is None:
            return None
        try:
            stats = json.loads((self.data_root / "stats.json").read_text())
            table = json.loads((self.data_root / "classes.json").read_text())
            prepared = [c["name"] for c in sorted(table["classes"], key=lambda c: int(c["index"]))]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if prepared != names:
            return None
        total: dict[int, float] = {}
        for split in (stats.get("class_pixel_frequency") or {}).values():
            for index, fraction in split.items():
                total[int(index)] = total.get(int(index), 0.0) + float(fraction)
        return total or None
