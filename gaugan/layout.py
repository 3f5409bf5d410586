"""The prepared dataset's layout, named once: shared by its reader (``gaugan.data``, ``gaugan.shards``)
and its writer (``pipeline.datasets``) without importing torch (ingest does not need it).

``<root>/manifest.parquet`` (one row per sample), ``<root>/classes.json`` (the class table, named by
``gaugan.classes.CLASSES_FILE``), ``<root>/stats.json`` (what ingest counted) and the samples' maps:
tar shards ``<root>/shards/<split>-<NNNNNN>.tar`` holding ``<id>.jpg|png``, ``<id>.label.png``,
``<id>.instance.png`` and ``<id>.edge.png`` (see pipeline/datasets/__init__.py for the columns).
"""

MANIFEST_FILE = "manifest.parquet"
STATS_FILE = "stats.json"
SHARD_DIR = "shards"  # the shards' folder under the dataset's root
SPLITS = ("train", "val")
KINDS = ("image", "label", "instance", "edge")  # a sample's maps, in the order they are stored
# Each map's tar member is ``<id><suffix>``; the image keeps its own extension (.jpg or .png).
MEMBER_SUFFIX = {"label": ".label.png", "instance": ".instance.png", "edge": ".edge.png"}
# Manifest columns of the shard layout (see pipeline/datasets/__init__.py): the sample's shard and
# byte range, its sha256, and each member's data offset and size in the shard (-1 where absent).
SHARD_COLUMNS = ("shard", "offset", "length", "sha256") + tuple(f"{k}_{f}" for k in KINDS for f in ("offset", "size"))


def isnull(value) -> bool:
    """A missing manifest value (a map a sample lacks): None, or NaN/empty as some parquet readers return it."""
    return value is None or (isinstance(value, float) and value != value) or value == ""
