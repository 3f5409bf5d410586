"""The parent of a fine-tune, resolved once into a folder that DVC sees (the resolve-parent stage's work).

``train.init_from`` names the parent: ``null`` (train from scratch), a registered version
(``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), a generator or training-state file, or an
NVlabs/SPADE checkpoint folder. :func:`resolve_parent` turns it into ``train.parent_dir``:

- ``parent.json``: {init_from, kind (none | registry | file | reference), name, alias, version,
  run_id, dataset_id, uri, files: {name: sha256}}; nothing in it depends on the time or the machine,
  so the folder is byte-identical as long as the parent is the same;
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

import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from pipeline.errors import MissingInputError, ParamsError, ReferenceImportError
from pipeline.io import atomic_path, sha256_file
from pipeline.training.parent import GENERATOR_FILE, PARENT_JSON, SEGMENTER_FILE, STATE_FILE

log = logging.getLogger(__name__)

REFERENCE_FILES = ("latest_net_G.pth", "latest_net_D.pth", "latest_net_E.pth", "opt.txt")
# the reference's --dataset_mode -> this project's setting (and its built-in class table)
DATASET_MODES = {"coco": "coco-stuff", "ade20k": "ade20k", "cityscapes": "cityscapes"}


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


def resolve_parent(init_from: str | None, out: Path, tracking_uri: str | None, root: Path) -> dict:
    """Write ``out`` (parent.json and the parent's files) for ``init_from``; returns parent.json's content."""
    kind = parent_kind(init_from, root)
    record: dict = {"init_from": init_from, "kind": kind}
    if kind == "registry":
        record, fetch = _registry(str(init_from), tracking_uri, root)
    elif kind == "file":
        record, fetch = _local_file(root / str(init_from), record)
    elif kind == "reference":
        record, fetch = _reference_folder(root / str(init_from), record)
    else:
        fetch = None
    _warn_if_alias_moved(out, record)
    if _unchanged(out, record):
        log.info("resolve-parent: %s is up to date (%s)", out, _describe(record))
        return json.loads((out / PARENT_JSON).read_text())
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        if fetch is not None:
            record["files"] = {name: sha256_file(tmp / name) for name in sorted(fetch(tmp))}
        (tmp / PARENT_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("resolve-parent: %s -> %s", _describe(record), out)
    return record


def _warn_if_alias_moved(out: Path, record: dict) -> None:
    """One line when ``init_from`` is an alias that points at another version than at the last run:
    the same params now train from another parent."""
    path = out / PARENT_JSON
    if record.get("kind") != "registry" or not record.get("alias") or not path.is_file():
        return
    old = json.loads(path.read_text())
    if old.get("init_from") == record["init_from"] and old.get("version") not in (None, record["version"]):
        name = record["name"]
        log.warning(
            "train.init_from %s moved from version %s (the last run's parent) to version %s: training starts "
            "from version %s; to keep a parent, pin it in params.yaml (train.init_from: models:/%s/%s)",
            record["init_from"],
            old["version"],
            record["version"],
            record["version"],
            name,
            old["version"],
        )


def _describe(record: dict) -> str:
    if record["kind"] == "none":
        return "no parent (train.init_from: null)"
    if record["kind"] == "registry":
        return f"{record['init_from']} = {record['uri']} (run {record['run_id']})"
    return f"{record['kind']} {record['uri']}"


def _unchanged(out: Path, record: dict) -> bool:
    """The folder already holds this parent: the same record and every file with its recorded hash."""
    path = out / PARENT_JSON
    if not path.is_file():
        return False
    old = json.loads(path.read_text())
    if {k: v for k, v in old.items() if k != "files"} != {k: v for k, v in record.items() if k != "files"}:
        return False
    if "files" in record and record["files"] != old.get("files"):
        return False
    files = old.get("files", {})
    present = {p.name for p in out.iterdir()} - {PARENT_JSON}
    return present == set(files) and all(sha256_file(out / n) == h for n, h in files.items())


def _local_file(path: Path, record: dict):
    """A generator or training-state file, copied (checked first: anything else is refused here)."""
    from gaugan.checkpoint import STATE_FORMAT, read_model_file

    payload = read_model_file(path)
    meta = payload.get("meta") or {}
    name = STATE_FILE if payload["format"] == STATE_FORMAT else GENERATOR_FILE
    record.update(
        uri=str(path.resolve()), run_id=meta.get("run_id"), dataset_id=meta.get("dataset_id"),
        files={name: sha256_file(path)},
    )  # fmt: skip

    def fetch(folder: Path) -> list[str]:
        shutil.copyfile(path, folder / name)
        return [name]

    return record, fetch


def _reference_folder(folder: Path, record: dict):
    """An NVlabs/SPADE checkpoint folder: its G (required), E and D, read and checked by the
    import-reference reader, become a training state (``train_state.pt``) that train loads as any;
    ``sources`` records the original files' hashes."""
    from pipeline.parents.reference_import import find_files

    find_files(folder)  # refuses a folder without latest_net_G.pth, naming what it has
    names = [n for n in REFERENCE_FILES if (folder / n).is_file()]
    record.update(uri=str(folder.resolve()), sources={n: sha256_file(folder / n) for n in names})

    def fetch(target: Path) -> list[str]:
        convert_reference(folder, target / STATE_FILE, record["sources"])
        return [STATE_FILE]

    return record, fetch


def convert_reference(folder: Path, out: Path, sources: dict) -> None:
    """The reference checkpoint as a training state: the setting from opt.txt's dataset_mode (or, without
    opt.txt, from the number of label channels); crop size and aspect ratio from opt.txt; D's
    architecture from its shapes. No EMA and no optimizer moments (the reference keeps none)."""
    from gaugan.checkpoint import save_train_state
    from pipeline.parents.reference_import import (
        KNOWN_CHANNELS,
        find_files,
        generator_shapes,
        load_reference,
        network_kind,
        read_opt_txt,
        read_state,
    )

    files = find_files(folder)
    options = read_opt_txt(files.opt_txt) if files.opt_txt is not None else {}
    mode = options.get("dataset_mode")
    if mode:
        setting = DATASET_MODES.get(mode)
    else:
        shapes = generator_shapes(read_state(files.generator, "generator"), files.generator)
        setting = KNOWN_CHANNELS.get(shapes.semantic_nc)
    if setting is None:
        raise ReferenceImportError(
            f"{folder}: an NVlabs checkpoint of dataset_mode {mode!r}: only coco, ade20k and cityscapes checkpoints "
            "have a known class table; import others into this project's format first"
        )
    model = load_reference(setting, files)
    config, D = model.config, None
    if (folder / "latest_net_D.pth").is_file():
        D = read_state(folder / "latest_net_D.pth", "discriminator")
        if network_kind(D) != "D":
            raise ReferenceImportError(f"{folder / 'latest_net_D.pth'}: not a discriminator checkpoint")
        config = replace(config, **discriminator_shapes(D))
    E = model.netE.state_dict() if model.netE is not None else None
    parts = {"G": model.netG.state_dict(), "E": E, "D": D, "ema": None}
    meta = {"source": "reference", "reference": {"setting": setting, "options": options, "files": sources}}
    save_train_state(out, parts, config, model.classes, meta)


def discriminator_shapes(state: dict) -> dict:
    """ndf, num_D, n_layers_D and norm_D read off a multi-scale discriminator's state dict."""
    layers = {k.split(".")[1] for k in state if k.startswith("discriminator_0.")}
    return {
        "ndf": int(state["discriminator_0.model0.0.weight"].shape[0]),
        "num_D": len({k.split(".")[0] for k in state}),
        "n_layers_D": len(layers) - 1,
        "norm_D": f"{'spectral' if any(k.endswith('weight_orig') for k in state) else ''}"
        f"{'batch' if any(k.endswith('running_mean') for k in state) else 'instance'}",
    }


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
    record = {
        "init_from": init_from,
        "kind": "registry",
        "name": name,
        "alias": alias,
        "version": int(mv.version),
        "run_id": mv.run_id,
        "dataset_id": tags.get("dataset_id"),
        "uri": f"models:/{name}/{mv.version}",
    }

    def fetch(folder: Path) -> list[str]:
        with mlflow_errors(uri, f"downloading the checkpoint files of {record['uri']}"):
            return _download_checkpoint(uri, str(mv.run_id), tags.get("generator_sha256"), folder, str(record["uri"]))

    return record, fetch


def _download_checkpoint(uri: str, run_id: str, generator_sha: str | None, folder: Path, what: str) -> list[str]:
    """The run's ``checkpoint/`` artifacts: the version's generator file (by its sha256 when the version
    records it) as generator.pt, a training state as train_state.pt (versions registered before
    training states were kept have none), and the segmenter it was scored with as segmenter.pt."""
    import mlflow

    from gaugan.checkpoint import FORMAT, STATE_FORMAT, read_model_file

    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint", dst_path=tmp,
                                                         tracking_uri=uri))  # fmt: skip
        found: dict[str, Path] = {}
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            if path.name == SEGMENTER_FILE:  # the segmenter the version was scored with (registry.log_model)
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
