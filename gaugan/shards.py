"""The one reader of the prepared dataset's tar shards (``pipeline/datasets/shards.py`` writes them).

A sample's tar members sit in its shard as one run of bytes, its *blob*; the manifest gives the
blob's shard, offset, length and sha256, and each member's data offset and size (absolute in the
shard, -1 where absent). :class:`ShardReader` reads a blob with one ``pread`` and checks it against
the manifest before anything decodes it: a shard that is missing (:class:`MissingFileError`), ends
before the blob does (truncated or replaced) or holds other bytes (:class:`DatasetError`) is named
with the sample and the fix. Every stage reads samples through it (``gaugan.data.PreparedDataset``),
and so does ingest, which checks each sample it keeps (``pipeline.datasets.shards.read_blob``).
Torch-free: ingest's workers import it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gaugan.errors import DatasetError, MissingFileError


class ShardReader:
    """Checked blobs from the shards under ``root``; one descriptor per shard, opened on first use and
    kept. Picklable (for loader workers): descriptors do not travel, and a forked process opens its own."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pid == os.getpid():  # a forked process leaves its parent's descriptors alone
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def where(self, shard: str, sample: str, split: str, kind: str = "") -> str:
        """How errors name a sample (and one of its members)."""
        member = f", member {kind}" if kind else ""
        return f"{self.root / shard} (sample {sample!r} of the {split} split{member})"

    def read(self, shard: str, start: int, length: int, sha256: bytes, sample: str, split: str) -> bytes:
        """The blob at bytes ``start``..``start + length`` of ``shard`` (a path under the root), checked
        against its ``sha256`` digest; ``sample`` and ``split`` name it in errors."""
        fd = self._fd(shard, sample, split)
        data = os.pread(fd, length, start)  # one read of the whole sample
        if len(data) != length:
            raise DatasetError(
                f"{self.where(shard, sample, split)}: the manifest points at bytes {start}..{start + length} but the "
                f"shard ends at {os.fstat(fd).st_size} (truncated or replaced); {self._fix()}"
            )
        if hashlib.sha256(data).digest() != sha256:
            raise DatasetError(
                f"{self.where(shard, sample, split)}: corrupt bytes {start}..{start + length} "
                f"(sha256 differs from the manifest); {self._fix()}"
            )
        return data

    def _fd(self, shard: str, sample: str, split: str) -> int:
        if self._pid != os.getpid():  # a forked loader worker opens its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            try:
                self._fds[shard] = os.open(self.root / shard, os.O_RDONLY)
            except FileNotFoundError:
                raise MissingFileError(f"{self.where(shard, sample, split)}: shard missing; {self._fix()}") from None
        return self._fds[shard]

    def _fix(self) -> str:
        return (
            "restore the shard with `dvc pull` / `dvc checkout`, or delete "
            f"{self.root} and run the ingest stage to prepare every sample again"
        )


def member_data(blob: bytes, start: int, offset: int, size: int) -> bytes | None:
    """One member's bytes in a blob read from ``start``, at ``offset`` (absolute in the shard, as the
    manifest gives it) for ``size`` bytes; None where the offset is negative (the sample has no such map)."""
    if offset < 0:
        return None
    return blob[offset - start : offset - start + size]
