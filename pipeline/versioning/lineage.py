"""Which data a model was trained on, in DVC's terms, as the training run's MLflow dataset input.

The prepared dataset (``data.out``) is a DVC output: ``dvc.lock`` records its md5 (``<md5>.dir`` for
a folder), and a teammate gets exactly that version with ``dvc pull`` (or finds it in the remote,
at ``<remote>/files/md5/<2 chars>/<rest>``). The train stage logs it with ``mlflow.log_input``: the
dataset's digest is the md5, its source is that location in the default DVC remote (the local
folder when no remote is set), and the input's tags carry the md5, the path, the remote and the
project's own ``dataset_id``, so the MLflow UI shows which data a model came from.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataLineage:
    path: str  # data.out, relative to the project root
    md5: str | None  # DVC's hash in dvc.lock; None when no stage of a DVC pipeline has produced it yet
    stage: str | None  # the stage that produces it
    remote: str | None  # the default DVC remote's name; None when none is set
    location: str | None  # where that version is stored in the remote

    def tags(self, dataset_id: str) -> dict[str, str]:
        tags = {
            "dvc_path": self.path,
            "dvc_md5": self.md5,
            "dvc_stage": self.stage,
            "dvc_remote": self.remote,
            "dvc_remote_location": self.location,
            "dataset_id": dataset_id,
        }
        return {k: v for k, v in tags.items() if v}

    def mlflow_dataset(self, root: Path, name: str, dataset_id: str):
        """An MLflow dataset (metadata only) whose digest is the md5 and whose source is the remote copy."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        uri = self.location or (Path(root).resolve() / self.path).as_uri()
        with warnings.catch_warnings():  # file:// matches two equivalent local sources: MLflow warns, then picks one
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(uri)  # file://, s3://, gs://, ...: MLflow's source for the scheme
        digest = (self.md5 or dataset_id).removesuffix(".dir")
        return MetaDataset(source=source, name=name, digest=digest)  # type: ignore[abstract]  # profile is None


def dvc_lineage(root: Path | str, data_out: str) -> DataLineage:
    """``data_out``'s md5 as ``dvc.lock`` records it, and its location in the default remote."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    root = Path(root).resolve()
    target = (root / data_out).resolve()
    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        log.info("%s is not a DVC project: the training data is recorded by its dataset_id alone", root)
        return DataLineage(data_out, None, None, None, None)
    with repo:
        md5, stage = None, None
        for candidate in repo.index.stages:
            for out in candidate.outs:
                if Path(out.fs_path).resolve() == target:
                    md5, stage = out.hash_info.value, getattr(candidate, "name", None) or candidate.addressing
        if md5 is None:
            log.info("%s has no md5 in dvc.lock (no `dvc repro` made it yet): recorded by its dataset_id", data_out)
        remote = repo.config["core"].get("remote")
        location = None
        if remote and md5:
            odb = repo.cloud.get_remote_odb(remote, "lineage")
            location = odb.fs.unstrip_protocol(odb.oid_to_path(md5))
    return DataLineage(data_out, md5, stage, remote, location)
