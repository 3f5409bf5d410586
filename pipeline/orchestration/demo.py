"""``gaugan-pipeline demo``: the whole pipeline on the embedded demo dataset, through ``dvc repro``.

It writes the demo source and versions it with DVC (``data/raw/demo.dvc``), runs ingest and
resolve-parent, the two training stages side by side on a CPU with several cores
(:mod:`pipeline.orchestration.side_by_side`), then lets ``dvc repro`` run the rest. The commands are dvc.yaml's
own; a later ``dvc repro`` finds everything up to date.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.orchestration.side_by_side import SIDE_BY_SIDE, changed_stages, run_side_by_side
from pipeline.params import load_params
from pipeline.versioning.tools import tool_env


def ensure_demo_source(params_path: Path, root: Path) -> None:
    """Write the demo source when missing, and version it with DVC (``<source>.dvc``, to commit with git)."""
    from pipeline.datasets.demo import write_demo_source
    from pipeline.versioning.data_versions import dvc_file, is_tracked, track

    params = load_params(params_path)
    source = root / params.data.source
    written = False
    if params.data.format == "folder" and not source.exists():
        print(f"writing the demo dataset source to {source}")
        write_demo_source(source, params.data.demo)
        written = True
    if (written or is_tracked(source)) and track(source):
        print(f"{source} versioned with DVC: {dvc_file(source).relative_to(root)} (commit it with git)")


def run_demo(params_path: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    root = root.resolve()
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{root / 'dvc.yaml'} not found: run the demo from the project root")
    started = time.perf_counter()
    env = tool_env(root)
    if not (root / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True)
    ensure_demo_source(params_path, root)
    _dvc(root, env, "repro", "ingest", "resolve-parent")  # what train reads
    pending = [stage for stage in SIDE_BY_SIDE if stage in changed_stages(root, env, SIDE_BY_SIDE)]
    if len(pending) > 1 and (os.cpu_count() or 1) > 1:
        run_side_by_side(root, env, pending)
        _dvc(root, env, "commit", "--force", *pending)
    _dvc(root, env, "repro")
    print_summary(params_path, root, env["MLFLOW_TRACKING_URI"], time.perf_counter() - started)


def _dvc(root: Path, env: dict, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env)
    if proc.returncode != 0:
        raise PipelineError(f"dvc {args[0]} failed; the failing stage and its error are printed above")


def print_summary(params_path: Path, root: Path, tracking_uri: str, seconds: float) -> None:
    params = load_params(params_path)
    registration = json.loads((root / params.registry.out).read_text())
    metrics = json.loads((root / params.evaluate.out_dir / "metrics.json").read_text())
    champion = f"models:/{registration['name']}@champion"
    lines = [
        "",
        f"demo finished in {seconds / 60:.1f} min",
        f"registered: {registration['name']} version {registration['version']}"
        + (" (champion)" if registration.get("promoted") else " (challenger; the champion is better)"),
        f"FID {metrics.get('fid', float('nan')):.3f} ({_backbone_note(metrics)}), "
        f"mIoU generated {metrics.get('miou', float('nan')):.3f} vs real {metrics.get('miou_real', float('nan')):.3f}",
        f"sample grid: {root / params.evaluate.out_dir / 'samples.png'}",
        f"training samples: {root / params.train.out_dir / 'samples.png'}",
        f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --workers 1",
        f"synthesize: gaugan-pipeline synthesize --model {champion} --label LABEL.png --out image.png",
        "version it: git add -A && git commit -m demo  (data/raw/demo.dvc, dvc.lock, the metrics; the rest is ignored)",
    ]
    print("\n".join(lines))


def _backbone_note(metrics: dict) -> str:
    backbone = metrics.get("backbone")
    name = backbone.get("name", "?") if isinstance(backbone, dict) else str(backbone or "?")
    comparable = "paper-comparable" if metrics.get("paper_comparable") else "not paper-comparable"
    return f"{name}, {comparable}"
