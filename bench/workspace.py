"""The benches' shared set-up of a work folder: params.yaml's settings pointed into it, the demo
dataset prepared there and the demo's segmenter trained there (each made once per folder), or a
whole project folder of the demo (its own params.yaml) for benches that run the pipeline's CLI.

Imports nothing of the pipeline until called: ``bench.gpu_speed`` imports this module on machines
with torch alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "params.yaml"


def bench_params(updates: dict[str, Any], source: str):
    """This repository's params.yaml with ``updates`` (dotted keys, ``{"data.out": "data"}``; None
    values keep the file's), validated; ``source`` names the bench in a settings error."""
    from pipeline.params import load_params, override

    return override(load_params(PARAMS_FILE), updates, source)


def demo_data(params, work: Path, progress: bool = False) -> None:
    """The demo source (``data.source``, written from ``data.demo``) and its prepared dataset
    (``data.out``, by the ingest stage) under ``work``; nothing when the prepared dataset is there."""
    from gaugan.layout import MANIFEST_FILE
    from pipeline.datasets.demo import write_demo_source
    from pipeline.stages import ingest

    if (work / params.data.out / MANIFEST_FILE).is_file():
        return
    write_demo_source(work / params.data.source, params.data.demo)
    ingest.run(params, work, progress=progress)


def demo_segmenter(params, work: Path) -> None:
    """The segmenter that scores mIoU (``segmenter.out`` under ``work``, by the train-segmenter stage
    on the prepared dataset); nothing when it is there."""
    from pipeline.stages import train_segmenter

    if not (work / params.segmenter.out).is_file():
        train_segmenter.run(params, work)


def demo_project(work: Path, sections: dict[str, dict], experiment: str):
    """``work`` as a project folder of the demo, for the pipeline's CLI run there: params.yaml
    written with ``data.format: demo``, ``sections`` merged in key by key (``{"train": {"max_steps":
    5}, "data": {"demo": {"num_val": 8}}}``) and MLflow in ``work/mlflow.db`` under ``experiment``;
    the demo dataset prepared into ``data.out``. -> its settings."""
    import yaml

    from pipeline.datasets import prepare
    from pipeline.params import load_params

    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["data"]["format"] = "demo"
    _merge(raw, sections)
    raw["mlflow"] = {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": experiment}
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(work / "params.yaml")
    prepare(params.data, work / "unused", work / params.data.out, progress=False)
    return params


def _merge(target: dict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
