"""Checkpoints from the registry and the internet, damaged or hostile, against every reader.

Readers: the generator file (``load_generator``, ``Synthesizer.from_checkpoint``), a parent for
fine-tuning (``read_model_file``), an NVlabs/SPADE ``latest_net_G.pth`` (``load_reference_checkpoint``
and ``import-reference``'s ``read_state``) and the training checkpoint a resume reads
(``CheckpointStore``). Each gets truncated files, bytes, a pickle that would run code, ``.pt`` files
that are not models, a generator file whose weights are another architecture's and generated damage
to a generator file's settings; ``import-reference`` gets generated ``opt.txt`` text. Each is one
error naming the file (one line for a checkpoint), nothing is loaded, and the hostile pickle never runs.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, toy_classes, write_tiny_generator
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from test_reference_import import narrow, reference_folder, write_opt_txt

from gaugan.checkpoint import FORMAT, load_generator, load_reference_checkpoint, read_model_file
from gaugan.errors import GauGANError
from gaugan.generator import SPADEGenerator
from gaugan.synthesizer import Synthesizer
from pipeline.parents.reference_import import import_reference, read_state
from pipeline.training.checkpoints import CheckpointStore

QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEWER = settings(QUICK, max_examples=max(10, settings().max_examples // 5))


def as_resume(path: Path):
    store = CheckpointStore(path.parent / "resume")
    store.dir.mkdir(exist_ok=True)
    store.path.write_bytes(path.read_bytes())
    return store.load("fingerprint")


READERS = {
    "load_generator": lambda p: load_generator(p),
    "Synthesizer.from_checkpoint": lambda p: Synthesizer.from_checkpoint(p, device="cpu"),
    "read_model_file": read_model_file,
    "load_reference_checkpoint": lambda p: load_reference_checkpoint(SPADEGenerator(narrow("coco-stuff")), p),
    "read_state": lambda p: read_state(p, "generator"),
    "resume": as_resume,
}


class Hostile:
    """Unpickling it would create the marker file (the test checks it never appears)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A good file for each reader: a tiny generator file, an NVlabs latest_net_G.pth."""
    root = tmp_path_factory.mktemp("good")
    generator = write_tiny_generator(root / "generator.pt", toy_classes())
    reference_folder(root / "nvlabs", narrow("coco-stuff"), "coco-stuff")
    return {"generator": generator, "reference": root / "nvlabs/latest_net_G.pth", "nvlabs": root / "nvlabs"}


def good_file(name: str, files: dict[str, Path]) -> Path:
    return files["reference"] if name in ("load_reference_checkpoint", "read_state") else files["generator"]


def named(reader: str, path: Path) -> str:
    """The file name the reader's errors give (a resume reads its copy, last.pt)."""
    return "last.pt" if reader == "resume" else path.name


def refused(reader, path: Path, one_line: bool = True) -> str:
    """The reader's error on ``path``: a GauGANError naming the file (one line), nothing else."""
    with pytest.raises(GauGANError) as err:
        READERS[reader](path)
    message = str(err.value)
    assert named(reader, path) in message, message
    if one_line:
        assert "\n" not in message, message
    return message


@pytest.mark.parametrize("reader", list(READERS))
def test_hostile_pickles_are_refused_and_never_run(reader, tmp_path):
    marker = tmp_path / "ran"
    for name, write in {
        "plain.pt": lambda p: p.write_bytes(pickle.dumps(Hostile(marker), protocol=2)),
        "torch.pt": lambda p: torch.save({"G": Hostile(marker)}, p),
        "nested.pt": lambda p: torch.save({"format": FORMAT, "config": Hostile(marker)}, p),
    }.items():
        path = tmp_path / name
        write(path)
        message = refused(reader, path)
        assert not marker.exists(), f"{reader} ran the pickle in {name}"
        if name != "plain.pt":
            assert "never unpickled" in message, message


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize(
    "content",
    [{"a": 1}, [1, 2], "a string", torch.zeros(3), {"format": "something-else/1"}, {}],
    ids=["dict", "list", "str", "tensor", "other-format", "empty"],
)
def test_files_that_are_not_models_are_refused(reader, content, tmp_path):
    path = tmp_path / "thing.pt"
    torch.save(content, path)
    if reader == "resume" and isinstance(content, dict) and not (set(content) & {"G"}):
        assert as_resume(path) is None  # a dict of another run: no matching fingerprint, trains from the start
        return
    refused(reader, path)


def test_a_generator_file_with_another_architectures_weights_names_the_mismatch(tmp_path, files):
    payload = torch.load(files["generator"], weights_only=True)
    other = SPADEGenerator(replace(tiny_config(), ngf=8, label_nc=7))
    payload["G"] = other.state_dict()
    torch.save(payload, tmp_path / "mixed.pt")
    message = refused("load_generator", tmp_path / "mixed.pt")
    assert "does not match SPADEGenerator" in message and "shape mismatches" in message


@pytest.mark.parametrize("reader", list(READERS))
@given(cut=st.floats(0, 1, exclude_max=True), data=st.data())
@FEWER
def test_truncated_or_scrambled_files_are_one_error(files, tmp_path_factory, reader, cut, data):
    good = good_file(reader, files).read_bytes()
    damaged = tmp_path_factory.mktemp("cut") / "latest_net_G.pth"
    mode = data.draw(st.sampled_from(["truncate", "bytes", "flip"]))
    if mode == "truncate":
        damaged.write_bytes(good[: int(cut * len(good))])
    elif mode == "bytes":
        damaged.write_bytes(data.draw(st.binary(max_size=2000)))
    else:
        at = int(cut * len(good))
        damaged.write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1 :])
    try:
        READERS[reader](damaged)
    except GauGANError as err:
        event(f"{mode}: refused")
        assert named(reader, damaged) in str(err) and "\n" not in str(err), str(err)
    else:
        event(f"{mode}: loaded")  # a flipped byte in a tensor's data is still a loadable file
        assert mode == "flip", f"{mode} loaded"


CONFIG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.none()),
)


@given(key=st.text(max_size=12) | st.sampled_from(sorted(tiny_config().to_dict())), value=CONFIG_VALUES)
@FEWER
def test_generated_damage_to_a_generator_files_settings_is_one_error(files, tmp_path_factory, key, value):
    payload = torch.load(files["generator"], weights_only=True)
    payload["config"] = {**payload["config"], key: value}
    path = tmp_path_factory.mktemp("config") / "generator.pt"
    torch.save(payload, path)
    note(f"config[{key!r}] = {value!r}")
    try:
        synth = Synthesizer.from_checkpoint(path, device="cpu")
    except GauGANError as err:
        event("refused")
        assert path.name in str(err) and "\n" not in str(err), str(err)
    else:
        event("loaded")  # a value that makes the same network (e.g. a flag the generator ignores)
        assert synth.netG is not None


OPT_LINES = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda k, v: f"{k:>25}: {v}",
            st.sampled_from(["label_nc", "ngf", "crop_size", "aspect_ratio", "norm_G", "use_vae", "no_instance", "zz"]),
            st.text(max_size=12),
        ),
    ),
    max_size=12,
)


@given(lines=OPT_LINES, keep=st.booleans())
@FEWER
def test_generated_opt_txt_is_a_named_refusal_or_an_import(files, tmp_path_factory, lines, keep):
    """Garbage in opt.txt (kept after the real options, or alone) never crashes the import."""
    folder = tmp_path_factory.mktemp("opt") / "coco_pretrained"
    folder.mkdir()
    (folder / "latest_net_G.pth").symlink_to(files["reference"])
    write_opt_txt(folder / "opt.txt", "coco-stuff", narrow("coco-stuff"))
    text = (folder / "opt.txt").read_text() if keep else ""
    (folder / "opt.txt").write_text(text + "\n".join(lines))
    out = folder.parent / "imported.pt"
    try:
        import_reference("coco-stuff", folder, out)
    except GauGANError as err:
        event("refused")
        assert "opt.txt" in str(err), str(err)
        assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    else:
        event("imported")
        assert load_generator(out).config.label_nc == 182
    assert os.sep  # the folder is left as it was given
