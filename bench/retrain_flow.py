"""A team's loop on the demo, timed as a user runs it: `gaugan-pipeline demo`, a data drop, `flow retrain`.

    python -m bench.retrain_flow [--rev REV] [--demo-only] [--drop 24] [--new-class fence] [--tmp DIR] [--json OUT]

In a fresh clone of this checkout at ``--rev`` (default HEAD; its code runs, through PYTHONPATH,
with this interpreter's packages): the demo (the whole pipeline, timed), a commit of what it made, a data drop of
``--drop`` training samples (half of them showing ``--new-class``), then ``gaugan-pipeline flow
retrain`` (timed; each stage's seconds from its summary), then a plain ``dvc repro`` (it must train
and register nothing). Prints one table and the decision. Never part of the tests: it takes
minutes, and its figures are the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.workspace import ROOT


def _run(cwd: Path, env: dict, *cmd: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return seconds, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to clone (e.g. an older one, for a baseline)")
    parser.add_argument("--demo-only", action="store_true", help="time the demo alone (a baseline before the flow)")
    parser.add_argument("--drop", type=int, default=24)
    parser.add_argument("--new-class", default="fence")
    parser.add_argument("--tmp", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-retrain-flow-", dir=args.tmp))
    repo = scratch / "gaugan"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    # the clone's origin is this checkout, whose branch is checked out: nothing to push to
    subprocess.run(["git", "remote", "remove", "origin"], cwd=repo, check=True)
    subprocess.run(["git", "checkout", "-q", args.rev], cwd=repo, check=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "PREFECT_HOME": str(scratch / "prefect"),
        "PYTHONPATH": str(repo),  # the clone's code, also in the stages' `gaugan-pipeline` (an editable install's)
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = [sys.executable, "-m", "pipeline.cli"]
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]

    demo_s, _ = _run(repo, env, *cli, "demo")
    if args.demo_only:
        print(f"gaugan-pipeline demo (fresh clone at {args.rev}): {demo_s:.1f} s")
        return
    _run(repo, env, *git, "add", "-A")
    _run(repo, env, *git, "commit", "-qm", "demo")
    drop_s, _ = _run(repo, env, *cli, "demo-data", "--drop", str(args.drop), "--new-class", args.new_class)
    retrain_s, out = _run(repo, env, *cli, "flow", "retrain")
    summary = json.loads((repo / ".gaugan/retrain_summary.json").read_text())
    repro_s, repro = _run(repo, env, sys.executable, "-m", "dvc", "repro")
    ran = sorted({line.split("'")[1] for line in repro.splitlines() if line.startswith("Running stage '")})
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    result = {
        "demo_s": round(demo_s, 1),
        "drop_s": round(drop_s, 1),
        "flow_retrain_s": round(retrain_s, 1),
        "stages_s": summary.get("seconds", {}),  # older versions kept none
        "decision": summary["decision"],
        "dvc_repro_after_s": round(repro_s, 1),
        "dvc_repro_after_ran": ran,
        "git_status_after": status.strip(),
        "locked_or_traceback_in_log": "database is locked" in out or "Traceback" in out,
    }
    rows = [("gaugan-pipeline demo (fresh clone)", result["demo_s"]), ("demo-data --drop", result["drop_s"])]
    rows += [("flow retrain", result["flow_retrain_s"])]
    rows += [(f"  {stage}", seconds) for stage, seconds in result["stages_s"].items() if stage != "total"]
    rows += [("dvc repro right after", result["dvc_repro_after_s"])]
    for name, seconds in rows:
        print(f"{name:<38} {seconds:8.1f} s")
    print(f"decision: {result['decision']}")
    print(f"dvc repro after the flow ran: {ran}; git status: {status.strip() or 'clean'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
