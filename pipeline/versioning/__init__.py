"""What a run was made from, and making it again: the code's git state, DVC's data versions, ``reproduce``."""
