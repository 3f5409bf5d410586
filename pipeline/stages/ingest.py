"""The ingest stage: a raw dataset (``data.source``, of ``data.format``) in, the prepared dataset out.

The prepared format is the contract with every later stage (``pipeline/datasets/__init__.py``).
Ingest is incremental and append-only: a rerun prepares only new or changed samples, into new
shards, keeps the other shards byte for byte, and swaps the output in atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.datasets import prepare
from pipeline.params import Params, scoped

PARAMS = ("data",)
log = logging.getLogger(__name__)


def run(params: Params, root: Path = Path("."), progress: bool = True) -> dict:
    """Prepare ``data.source`` into ``data.out``; returns the stats written to ``stats.json``."""
    data = scoped(params, PARAMS, "ingest").data
    source, out = Path(root) / data.source, Path(root) / data.out
    log.info(
        "ingest: %s dataset from %s into %s with %d workers (on_error: %s)",
        data.format,
        source if data.format != "demo" else f"seed {data.demo.seed}",
        out,
        data.workers,
        data.on_error,
    )
    stats = prepare(data, source, out, progress=progress, root=Path(root))
    log.info(
        "ingest: %s; processed %d, reused %d, skipped %d; shards: %s",
        ", ".join(f"{k} {v}" for k, v in stats["num_samples"].items()),
        stats["processed_this_run"],
        stats["reused"],
        len(stats["skipped"]),
        ", ".join(f"{len(v)} {k}" for k, v in stats["shards"].items()),
    )
    return stats
