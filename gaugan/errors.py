"""The errors a user can fix. Each message names the value, the file or the setting, and the fix.

Everything the library raises for bad input, bad settings or a wrong or missing file derives from
:class:`GauGANError`, so a caller (the ``gaugan-pipeline`` CLI) reports exactly these as one line
and lets any other exception, a bug, show its traceback. Each class also derives from the built-in
exception that describes it (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError``
keeps working.
"""

from __future__ import annotations


class GauGANError(Exception):
    """Base of every error whose message tells the user what to change."""


class ConfigError(GauGANError, ValueError):
    """An invalid architecture or training setting."""


class InputError(GauGANError, ValueError):
    """Label maps, instance maps or style images that the model cannot take."""


class UnknownColorError(InputError):
    """A colour-coded label map holds a colour that is not in the model's palette."""


class DatasetError(GauGANError, ValueError):
    """A prepared dataset that is incomplete or malformed."""


class CheckpointError(GauGANError, ValueError):
    """A file that is not the expected checkpoint, or does not fit the network."""


class MissingFileError(GauGANError, FileNotFoundError):
    """A file that must exist does not: a checkpoint, a dataset file or pretrained weights."""


class NonFiniteLossError(GauGANError, FloatingPointError):
    """A loss became NaN or infinite; raised before any optimizer step used it."""
