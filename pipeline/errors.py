"""The pipeline's errors a user can fix: one base, under the library's.

:class:`PipelineError` derives from :class:`gaugan.GauGANError`, so the CLI reports every fixable
problem, from the library or from a stage, by catching that one base: one red line naming the
stage, exit code 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from gaugan.errors import GauGANError


class PipelineError(GauGANError):
    """A problem with settings, inputs or services that the user can fix; the message says how."""


class MissingInputError(PipelineError, FileNotFoundError):
    """A file a stage reads does not exist; the message names the stage that writes it."""


class ParamsError(PipelineError, ValueError):
    """params.yaml is missing, malformed, or has an unknown key or a bad value."""


class IngestError(PipelineError, RuntimeError):
    """A raw dataset that cannot be prepared; the message names the file and the problem."""


class TrainError(PipelineError, RuntimeError):
    """Training settings that do not fit the data or the machine, or a run that had to stop."""


class EvaluationError(PipelineError, ValueError):
    """Evaluation inputs that do not fit together (classes, sizes, missing weights)."""


class SegmenterError(EvaluationError):
    """A segmentation network or its weights file that cannot be used."""


class FeatureWeightsError(EvaluationError, FileNotFoundError):
    """The weights a FID/KID feature extractor needs are missing or are not what they claim to be."""


class TrackingError(PipelineError, RuntimeError):
    """MLflow (tracking server or registry) refused or could not be reached."""


class RegistryError(TrackingError):
    """A registration that could not be completed (the registry was restored)."""


class ModelNotFoundError(TrackingError, LookupError):
    """A model URI, registered name, alias or version that does not exist."""


class ReferenceImportError(PipelineError, ValueError):
    """A reference (NVlabs/SPADE) checkpoint that cannot be imported: unreadable, or not of the setting given."""


class StageFailed(PipelineError, RuntimeError):
    """A DVC stage run by a Prefect flow exited non-zero; the message ends with its output's tail."""


class UndeclaredParamError(AttributeError):
    """A stage read a setting that its ``dvc.yaml`` entry does not list: a bug in the stage, not user input."""
