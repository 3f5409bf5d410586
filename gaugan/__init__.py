"""GauGAN / SPADE in plain PyTorch: layers, networks, losses, data reader, trainer and synthesizer.

Entry points: :class:`gaugan.config.GauGANConfig` (the architecture), :mod:`gaugan.networks` (its G, D
and E built), :class:`gaugan.trainer.GauGANTrainer` (one G+D step at a time),
:class:`gaugan.synthesizer.Synthesizer` (label maps in, images out),
:class:`gaugan.classes.ClassTable` and :class:`gaugan.data.PreparedDataset` (the prepared format).
Every error a user can fix derives from :class:`GauGANError`.
"""

from gaugan.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    GauGANError,
    InputError,
    MissingFileError,
    NonFiniteLossError,
    UnknownColorError,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "GauGANError",
    "InputError",
    "MissingFileError",
    "NonFiniteLossError",
    "UnknownColorError",
]
