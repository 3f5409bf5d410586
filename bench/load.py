"""A bounded load test of the painting app: N painters for a fixed time against a real server.

For each setting (``demo``: the demo's model, 64x64; ``paper``: the paper's size, 256x256, 150
classes; random weights, the cost of trained ones, as ``bench/app.py``), ``gaugan-pipeline app``
runs in its own process on a loopback port with that generator file, and ``--painters`` threads
paint for ``--seconds``: each sends ``POST /api/synthesize`` with a new label map (random strokes
over the previous one, as a painter's canvas changes), waits for the answer, and sends the next.
Reported: requests, throughput, latency p50/p95/max (seconds, client side: the server does one
inference at a time, so latency includes the queue), errors by status (the goal: 0), and the
server's resident memory after a warm-up request, a quarter of the way and at the end (growth
that goes on after the first quarter would be a leak; the timeline, one sample a second, is in
the JSON). The server is ended by its process id.

Usage: ``python -m bench.load [--setting all|demo|paper] [--painters 4] [--seconds 60] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

from bench.app import SETTINGS, write_model
from bench.servers import free_port, launch_app, stop
from bench.workspace import PARAMS_FILE

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model: Path, work: Path) -> tuple[subprocess.Popen, str, Path]:
    params = yaml.safe_load(PARAMS_FILE.read_text())
    port = free_port()
    params["app"].update({"model": str(model), "port": port, "host": "127.0.0.1", "device": "cpu"})
    params["mlflow"]["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    log = work / "server.log"
    try:
        proc = launch_app(work / "params.yaml", port, work, {**os.environ, "PYTHONPATH": str(ROOT)}, log)
    except RuntimeError as err:
        raise SystemExit(str(err)) from None
    return proc, f"http://127.0.0.1:{port}", log


def png_b64(labels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(labels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def painter(url: str, size: int, label_nc: int, seed: int, until: float, out: list, errors: dict) -> None:
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size, size), np.uint8)
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < until:
            y, x = rng.integers(0, size, 2)
            r = int(rng.integers(2, max(3, size // 6)))
            canvas[max(0, y - r) : y + r, max(0, x - r) : x + r] = rng.integers(0, label_nc)
            start = time.perf_counter()
            try:
                response = client.post(f"{url}/api/synthesize", json={"label": png_b64(canvas), "seed": 0})
                status = response.status_code
            except httpx.HTTPError as err:
                status = type(err).__name__
            elapsed = time.perf_counter() - start
            if status == 200:
                out.append(elapsed)
            else:
                errors[status] = errors.get(status, 0) + 1


def run(setting: str, painters: int, seconds: float) -> dict:
    config = SETTINGS[setting]
    size, label_nc = config["crop_size"], config["label_nc"]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        model = write_model(setting, work)
        proc, url, log = start_server(model, work)
        try:
            warm = np.zeros((size, size), np.uint8)
            httpx.post(f"{url}/api/synthesize", json={"label": png_b64(warm)}, timeout=300).raise_for_status()
            rss_start = rss_mb(proc.pid)
            latencies: list[float] = []
            errors: dict = {}
            until = time.monotonic() + seconds
            threads = [
                threading.Thread(target=painter, args=(url, size, label_nc, 100 + i, until, latencies, errors))
                for i in range(painters)
            ]
            samples: list[tuple[float, float]] = []  # (seconds since the start, RSS MiB)
            begin = time.monotonic()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                samples.append((time.monotonic() - begin, rss_mb(proc.pid)))
                time.sleep(1)
            wall = time.monotonic() - begin
            time.sleep(2)  # idle again: no inference in flight when the end is read
            rss_end = rss_mb(proc.pid)
            quarter = next((mb for at, mb in samples if at >= wall / 4), rss_start)
            tracebacks = log.read_text().count("Traceback")
        finally:
            stop(proc)
    ordered = sorted(latencies)
    return {
        "setting": setting,
        "size": f"{size}x{size}",
        "painters": painters,
        "seconds": round(wall, 1),
        "requests": len(latencies) + sum(errors.values()),
        "per_second": round(len(latencies) / wall, 2),
        "p50_s": round(statistics.median(ordered), 3) if ordered else None,
        "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3) if ordered else None,
        "max_s": round(ordered[-1], 3) if ordered else None,
        "errors": errors,
        "tracebacks_in_log": tracebacks,
        "rss_start_mb": round(rss_start, 1),
        "rss_quarter_mb": round(quarter, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_timeline": [(round(at, 1), round(mb, 1)) for at, mb in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=["all", *SETTINGS], default="all")
    parser.add_argument("--painters", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = list(SETTINGS) if args.setting == "all" else [args.setting]
    rows = [run(name, args.painters, args.seconds) for name in names]
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    columns = ["setting", "size", "painters", "s", "requests", "req/s", "p50 s", "p95 s", "max s", "errors"]
    print("| " + " | ".join([*columns, "tracebacks", "RSS MiB start, 1/4, end"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['size']} | {r['painters']} | {r['seconds']} | {r['requests']} | {r['per_second']} "
            f"| {r['p50_s']} | {r['p95_s']} | {r['max_s']} | {sum(r['errors'].values())} {r['errors'] or ''} "
            f"| {r['tracebacks_in_log']} | {r['rss_start_mb']}, {r['rss_quarter_mb']}, {r['rss_end_mb']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
