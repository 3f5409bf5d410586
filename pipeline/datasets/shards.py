"""Shards of the prepared dataset: POSIX (pax) tar files in the WebDataset naming convention.

A sample is a run of consecutive tar members, ``<id>.jpg|png`` (the image), ``<id>.label.png``,
and with instances ``<id>.instance.png`` and ``<id>.edge.png``: what ``tar``, Python's
``tarfile`` and WebDataset read (one sample per key). The bytes are a function of the samples
alone: members in that order, mtime 0, uid/gid 0, no user names, mode 0644, and the archive ends
with the two zero blocks of the standard without padding to a 10 KiB record, so a shard's payload
is its size minus 1024 bytes. A sample's run of members (headers and data) is its *blob*; the
manifest gives each blob's shard, offset, length and sha256, and each member's data offset and
size, so a reader gets one sample with one read. Blobs are position independent: compaction and
the layout conversions copy them unchanged.

Shards are per split, ``shards/<split>-<NNNNNN>.tar``, filled in (split, id) order up to
``data.shard_size_mb`` (a sample larger than that gets a shard of its own). This module writes them;
the library's :class:`gaugan.shards.ShardReader` reads them, here (:func:`read_blob`) as in every
stage. The layout's names (the folder, the member suffixes, the splits) are in ``gaugan.layout``.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

from gaugan.errors import DatasetError, MissingFileError
from gaugan.layout import KINDS, MEMBER_SUFFIX, SHARD_DIR, SPLITS
from gaugan.shards import ShardReader, member_data
from pipeline.errors import IngestError

BLOCK = 512
END = b"\0" * (2 * BLOCK)  # the end-of-archive marker: two zero blocks
_NAME = re.compile(rf"^({'|'.join(SPLITS)})-(\d{{6}})\.tar$")


def member_name(sample_id: str, kind: str, image_ext: str = ".png") -> str:
    """The tar member of one map of a sample (WebDataset: key ``sample_id``, extension after it)."""
    return f"{sample_id}{image_ext if kind == 'image' else MEMBER_SUFFIX[kind]}"


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def sample_blob(members: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    """The blob of one sample, from ``{kind: (member name, bytes)}``, and its manifest fields:
    length, sha256 and ``<kind>_offset`` (relative to the blob; -1 when absent) / ``<kind>_size``."""
    parts: list[bytes] = []
    pos = 0
    info: dict = {}
    for kind in KINDS:
        if kind not in members:
            info[f"{kind}_offset"], info[f"{kind}_size"] = -1, 0
            continue
        name, data = members[kind]
        head = _header(name, len(data))
        info[f"{kind}_offset"], info[f"{kind}_size"] = pos + len(head), len(data)
        pad = -len(data) % BLOCK
        parts += [head, data, b"\0" * pad]
        pos += len(head) + len(data) + pad
    blob = b"".join(parts)
    info["length"], info["sha256"] = len(blob), hashlib.sha256(blob).hexdigest()
    return blob, info


def placed(info: dict, shard: str, offset: int) -> dict:
    """A blob's manifest fields once it sits at ``offset`` in ``shard`` (member offsets absolute)."""
    row = dict(info, shard=shard, offset=offset)
    for kind in KINDS:
        rel = int(info[f"{kind}_offset"]) - int(info.get("offset", 0) or 0)
        row[f"{kind}_offset"] = -1 if int(info[f"{kind}_offset"]) < 0 else offset + rel
    return row


def shard_name(split: str, index: int) -> str:
    return f"{SHARD_DIR}/{split}-{index:06d}.tar"


def shard_index(name: str) -> int:
    """The number of ``shards/<split>-<NNNNNN>.tar``; -1 for a name of another form."""
    m = _NAME.match(Path(name).name)
    return int(m.group(2)) if m else -1


class ShardWriter:
    """Appends blobs of one split to new shards ``<split>-<first>.tar``, ``<split>-<first+1>.tar``...
    in ``root``, starting the next shard where the current one would pass ``max_bytes``."""

    def __init__(self, root: Path, split: str, first: int, max_bytes: int):
        self.root, self.split, self.next, self.max_bytes = Path(root), split, first, max_bytes
        self.written: list[str] = []
        self._fh: BinaryIO | None = None
        self._size = 0

    def add(self, blob: bytes) -> tuple[str, int]:
        """Write ``blob``; returns (shard, offset) where it starts."""
        if self._fh is not None and self._size + len(blob) + len(END) > self.max_bytes:
            self._finish()
        if self._fh is None:
            name = shard_name(self.split, self.next)
            self.next += 1
            (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            self._fh = open(self.root / name, "xb")  # noqa: SIM115 - closed by _finish
            self._size = 0
            self.written.append(name)
        offset = self._size
        assert self._fh is not None
        self._fh.write(blob)
        self._size += len(blob)
        return self.written[-1], offset

    def _finish(self) -> None:
        if self._fh is not None:
            self._fh.write(END)
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        self._finish()


def read_blob(root: Path, row: dict) -> bytes:
    """A sample's blob from its shard under ``root``, read and checked by the library's one reader
    (:class:`gaugan.shards.ShardReader`); a missing, truncated or corrupt shard is an
    :class:`IngestError` naming the shard, the sample and the fix, which stops ingest."""
    sha256 = bytes.fromhex(str(row["sha256"]))
    try:
        with ShardReader(root) as reader:
            return reader.read(
                str(row["shard"]), int(row["offset"]), int(row["length"]), sha256, str(row["id"]), str(row["split"])
            )
    except (DatasetError, MissingFileError) as err:
        raise IngestError(str(err)) from None


def member(blob: bytes, row: dict, kind: str) -> bytes | None:
    """One member's bytes from a blob read with :func:`read_blob` (None where absent)."""
    return member_data(blob, int(row["offset"]), int(row[f"{kind}_offset"]), int(row[f"{kind}_size"]))
