"""Servers for the benchmarks and the tests: the painting app in its own process on loopback,
started and waited for, and ended by its process id (its process group), never by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(params: Path, port: int, cwd: Path, env: dict, log: Path, timeout: float = 180) -> subprocess.Popen:
    """``gaugan-pipeline app --params PARAMS`` in its own session, its output in ``log``; returns once
    ``/api/config`` answers on ``port``. A server that exits or stays silent is stopped and a
    RuntimeError carries its log."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "app", "--params", str(params)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api/config"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    """End a server started with start_new_session=True: its process group, by its pid."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
