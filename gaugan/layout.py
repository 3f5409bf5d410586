"""Names of the prepared dataset's shard layout, shared by its reader (``gaugan.data``) and its
writer (``pipeline.datasets``) without importing torch (ingest does not need it)."""

KINDS = ("image", "label", "instance", "edge")  # a sample's maps, in the order they are stored
# Manifest columns of the shard layout (see pipeline/datasets/__init__.py): the sample's shard and
# byte range, its sha256, and each member's data offset and size in the shard (-1 where absent).
SHARD_COLUMNS = ("shard", "offset", "length", "sha256") + tuple(f"{k}_{f}" for k in KINDS for f in ("offset", "size"))
