"""The parent of a fine-tune, resolved once into a folder that DVC sees (the resolve-parent stage's work).

``train.init_from`` names the parent: ``null`` (train from scratch), a registered version
(``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), a generator or training-state file, or an
NVlabs/SPADE checkpoint folder. :func:`resolve_parent` turns it into ``train.parent_dir``:

- ``parent.json`` (:class:`~pipeline.parents.record.ParentRecord`): the kind (none | registry | file |
  reference), the version or file it names and the sha256 of each file; nothing in it depends on the
  time or the machine, so the folder is byte-identical as long as the parent is the same;
- the parent's files, in this project's formats: ``generator.pt`` and ``train_state.pt`` (a
  registered version's artifacts ``checkpoint/*``, told apart by their format), a copy of the given
  file, or an NVlabs folder's ``latest_net_{G,E,D}.pth`` + ``opt.txt`` converted to a training
  state with the import-reference reader (``sources`` then records the original files' hashes).

An alias is resolved to a version here, once: ``dvc repro`` runs this stage every time
(``always_changed``) and reruns train exactly when the folder changed, i.e. when the alias moved
(or the file changed). Files already in the folder with the recorded hashes are not fetched again.
The train stage reads only the folder (``pipeline.training.parent``), never the registry.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import MissingInputError, ParamsError
from pipeline.io import atomic_path, sha256_file
from pipeline.parents.record import (
    GENERATOR_FILE,
    PARENT_JSON,
    SEGMENTER_FILE,
    STATE_FILE,
    ParentRecord,
    describe_parent,
)

log = logging.getLogger(__name__)


def parent_kind(init_from: str | None, root: Path) -> str:
    """none | registry | file | reference, refusing what is none of them."""
    from pipeline.registry.versions import is_mlflow_uri, parse_registered

    if init_from is None:
        return "none"
    if is_mlflow_uri(init_from):
        if parse_registered(init_from) is None:
            raise ParamsError(
                f"train.init_from {init_from!r}: a registry parent is models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        return "registry"
    path = root / init_from
    if path.is_dir():
        return "reference"
    if path.is_file():
        return "file"
    raise MissingInputError(
        f"train.init_from {init_from!r}: no such file or folder ({path}); give a generator or training-state "
        "file, an NVlabs checkpoint folder, models:/NAME@ALIAS, or null"
    )


def resolve_parent(init_from: str | None, out: Path, tracking_uri: str | None, root: Path) -> ParentRecord:
    """Write ``out`` (parent.json and the parent's files) for ``init_from``; returns its record."""
    kind = parent_kind(init_from, root)
    record, fetch = ParentRecord(init_from=init_from), None
    if kind == "registry":
        record, fetch = _registry(str(init_from), tracking_uri, root)
    elif kind == "file":
        record, fetch = _local_file(root / str(init_from), init_from)
    elif kind == "reference":
        record, fetch = _reference_folder(root / str(init_from), init_from)
    old = ParentRecord.read(out)
    _warn_if_alias_moved(old, record)
    if old is not None and _unchanged(out, old, record):
        log.info("resolve-parent: %s is up to date (%s)", out, describe_parent(old))
        return old
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        if fetch is not None:
            record.files = {name: sha256_file(tmp / name) for name in sorted(fetch(tmp))}
        record.write(tmp)
    log.info("resolve-parent: %s -> %s", describe_parent(record), out)
    return record


def _warn_if_alias_moved(old: ParentRecord | None, record: ParentRecord) -> None:
    """One line when ``init_from`` is an alias that points at another version than at the last run:
    the same params now train from another parent."""
    if old is None or record.kind != "registry" or not record.alias:
        return
    if old.init_from == record.init_from and old.version not in (None, record.version):
        log.warning(
            "train.init_from %s moved from version %s (the last run's parent) to version %s: training starts "
            "from version %s; to keep a parent, pin it in params.yaml (train.init_from: models:/%s/%s)",
            record.init_from,
            old.version,
            record.version,
            record.version,
            record.name,
            old.version,
        )


def _unchanged(out: Path, old: ParentRecord, record: ParentRecord) -> bool:
    """The folder already holds this parent: the same record and every file with its recorded hash."""
    without_files = {k: v for k, v in record.to_json().items() if k != "files"}
    if {k: v for k, v in old.to_json().items() if k != "files"} != without_files:
        return False
    if record.files and record.files != old.files:
        return False
    present = {p.name for p in out.iterdir()} - {PARENT_JSON}
    return present == set(old.files) and all(sha256_file(out / n) == h for n, h in old.files.items())


def _local_file(path: Path, init_from: str | None):
    """A generator or training-state file, copied (checked first: anything else is refused here)."""
    from gaugan.checkpoint import STATE_FORMAT, read_model_file

    payload = read_model_file(path)
    meta = payload.get("meta") or {}
    name = STATE_FILE if payload["format"] == STATE_FORMAT else GENERATOR_FILE
    record = ParentRecord(
        init_from, "file", uri=str(path.resolve()), run_id=meta.get("run_id"), dataset_id=meta.get("dataset_id")
    )
    record.files = {name: sha256_file(path)}

    def fetch(folder: Path) -> list[str]:
        shutil.copyfile(path, folder / name)
        return [name]

    return record, fetch


def _reference_folder(folder: Path, init_from: str | None):
    """An NVlabs/SPADE checkpoint folder: its G (required), E and D, read and checked by the
    import-reference reader, become a training state (``train_state.pt``) that train loads as any;
    ``sources`` records the original files' hashes."""
    from pipeline.parents.reference_import import REFERENCE_FILES, convert_reference, find_files

    find_files(folder)  # refuses a folder without latest_net_G.pth, naming what it has
    sources = {n: sha256_file(folder / n) for n in REFERENCE_FILES if (folder / n).is_file()}
    record = ParentRecord(init_from, "reference", uri=str(folder.resolve()), sources=sources)

    def fetch(target: Path) -> list[str]:
        convert_reference(folder, target / STATE_FILE, sources)
        return [STATE_FILE]

    return record, fetch


def _registry(init_from: str, tracking_uri: str | None, root: Path):
    """The version an alias points at now, and a fetch of its generator and training-state artifacts."""
    import mlflow

    from pipeline.registry.versions import parse_registered, registered_version
    from pipeline.tracking import mlflow_errors, require_server, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, root)
    require_server(uri)
    client = mlflow.MlflowClient(uri)
    parsed = parse_registered(init_from)
    assert parsed is not None  # parent_kind checked it
    name, alias, version = parsed
    with mlflow_errors(uri, f"resolving train.init_from {init_from}"):
        mv = registered_version(init_from, client)
    tags = dict(mv.tags or {})
    version_uri = f"models:/{name}/{mv.version}"
    record = ParentRecord(
        init_from, "registry", name, alias, int(mv.version), mv.run_id, tags.get("dataset_id"), version_uri
    )

    def fetch(folder: Path) -> list[str]:
        with mlflow_errors(uri, f"downloading the checkpoint files of {version_uri}"):
            return _download_checkpoint(uri, str(mv.run_id), tags.get("generator_sha256"), folder, version_uri)

    return record, fetch


def _download_checkpoint(uri: str, run_id: str, generator_sha: str | None, folder: Path, what: str) -> list[str]:
    """The run's ``checkpoint/`` artifacts: the version's generator file (by its sha256 when the version
    records it) as generator.pt, a training state as train_state.pt (versions registered before
    training states were kept have none), and the segmenter it was scored with as segmenter.pt."""
    import mlflow

    from gaugan.checkpoint import FORMAT, STATE_FORMAT, read_model_file
    from pipeline.registry.versions import SEGMENTER_ARTIFACT

    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        downloaded = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoint", dst_path=tmp, tracking_uri=uri
        )
        local = Path(downloaded)
        found: dict[str, Path] = {}
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            if path.name == SEGMENTER_ARTIFACT:  # the segmenter the version was scored with (registry.log_model)
                found[SEGMENTER_FILE] = path
                continue
            fmt = read_model_file(path).get("format")
            if fmt == STATE_FORMAT:
                found[STATE_FILE] = path
            elif fmt == FORMAT and (generator_sha is None or sha256_file(path) == generator_sha):
                found[GENERATOR_FILE] = path
        if GENERATOR_FILE not in found:
            raise MissingInputError(
                f"{what}: its run {run_id} has no generator file under checkpoint/ (re-register it)"
            )
        for name, path in found.items():
            shutil.move(path, folder / name)
    return sorted(found)
