"""Ingest under generated damage (Hypothesis), on small copies of the real sources in ../shared/fixtures/real.

Each case damages one file of a source that prepared cleanly (a truncated image, a label map of
another size, a class outside the table, a missing or extra instance map, broken or duplicated COCO
JSON, two files with one id, a dangling link, a link loop, a folder where a file should be) and
prepares it again over the previous output, twice:

- ``on_error: fail``: the run succeeds (the damage is harmless) or raises ``IngestError`` with one
  line naming the damaged file; the previous prepared dataset is then intact, byte for byte;
- ``on_error: skip``: the bad sample is listed in ``stats["skipped"]`` with its file, and the new
  output is complete (or, where the source as a whole is broken, the same one-line error);

never another exception, and never a temporary or half-written folder left beside the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, ingest_dataset
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from gaugan.data import PreparedDataset
from pipeline.errors import IngestError

SPADE = FIXTURES / "cocostuff/spade_coco_stuff"
ADE = FIXTURES / "ade20k/sceneparsing"
# a tenth of the profile's cases: each case prepares twice (ci: 25 per format; make fuzz: 500)
BUDGET = settings(
    max_examples=max(10, settings().max_examples // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def spade_source(root: Path) -> Path:
    """Four train and two val samples of the real SPADE COCO-Stuff dataroot, and labels.txt."""
    src = root / "spade"
    for split, n in (("train", 4), ("val", 2)):
        stems = sorted(p.stem for p in (SPADE / f"{split}_img").iterdir())[:n]
        for kind, ext in (("img", "jpg"), ("label", "png"), ("inst", "png")):
            (src / f"{split}_{kind}").mkdir(parents=True)
            for stem in stems:
                shutil.copy(SPADE / f"{split}_{kind}/{stem}.{ext}", src / f"{split}_{kind}/{stem}.{ext}")
    shutil.copy(FIXTURES / "cocostuff/labels.txt", src)
    return src


def ade_source(root: Path) -> Path:
    """The real ADE20K scene-parsing samples (three val) and objectInfo150.csv."""
    src = root / "ade"
    shutil.copytree(ADE / "ADEChallengeData2016", src)
    shutil.copy(ADE / "objectInfo150.csv", src)
    return src


def coco_source(root: Path) -> Path:
    """COCO-Stuff from real annotations (rikai's instances subset): blank JPEGs of the JSON sizes."""
    data = json.loads((FIXTURES / "coco/instances_train2017_subset20_rikai.json").read_text())
    src = root / "coco"
    (src / "train2017").mkdir(parents=True)
    (src / "annotations").mkdir()
    shutil.copy(FIXTURES / "cocostuff/labels.txt", src)
    images = data["images"][:4]
    for i, image in enumerate(images):
        Image.new("RGB", (image["width"], image["height"]), (20 * i, 80, 120)).save(
            src / "train2017" / image["file_name"]
        )
    keep = {im["id"] for im in images}
    subset = {
        "images": images,
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        **({"categories": data["categories"]} if "categories" in data else {}),
    }
    (src / "annotations/instances_train2017.json").write_text(json.dumps(subset))
    (src / "annotations/stuff_train2017.json").write_text(json.dumps({"images": images, "annotations": []}))
    return src


@dataclass
class Source:
    fmt: str
    make: object
    images: str  # glob of the images, relative to the source
    labels: str  # glob of the label maps ("" where labels come from JSON)
    instances: str  # glob of the instance maps ("" where there are none)
    json: str  # glob of the annotation files ("" where there are none)


SOURCES = {
    "spade": Source("spade", spade_source, "*_img/*.jpg", "*_label/*.png", "*_inst/*.png", ""),
    "ade20k": Source("ade20k", ade_source, "images/*/*.jpg", "annotations/*/*.png", "", ""),
    "coco-stuff": Source("coco-stuff", coco_source, "train2017/*.jpg", "", "", "annotations/instances_*.json"),
}
DAMAGE = [
    "truncate",
    "label_size",
    "unknown_label",
    "missing_instance",
    "extra_instance",
    "broken_json",
    "duplicate_json_id",
    "duplicate_id",
    "dangling_link",
    "link_loop",
    "folder_loop",
    "folder_as_file",
]


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes (links followed)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def damage(src: Path, source: Source, kind: str, pick: int, cut: float) -> tuple[Path, bool] | None:
    """Apply ``kind`` to one file; returns (the file named in errors, whether the damage can pass
    unnoticed), or None where the kind does not apply to this format."""

    def one(pattern: str) -> Path | None:
        files = sorted(src.glob(pattern)) if pattern else []
        return files[pick % len(files)] if files else None

    if kind == "truncate":
        image = one(source.images)
        data = image.read_bytes()
        image.write_bytes(data[: int(cut * (len(data) - 1))])
        return image, False
    if kind in ("label_size", "unknown_label"):
        label = one(source.labels)
        if label is None:
            return None
        values = np.array(Image.open(label))
        if kind == "label_size":
            Image.fromarray(values).resize((values.shape[1] + 3, values.shape[0])).save(label)
        else:
            values[: max(1, values.shape[0] // 4), : max(1, values.shape[1] // 4)] = 200  # in no table here
            Image.fromarray(values).save(label)
        return label, False
    if kind in ("missing_instance", "extra_instance"):
        instance = one(source.instances)
        if instance is None:
            return None
        if kind == "missing_instance":
            instance.unlink()
            return instance, False
        extra = instance.with_name("999999999999.png")
        shutil.copy(instance, extra)
        return extra, False
    if kind in ("broken_json", "duplicate_json_id"):
        annotations = one(source.json)
        if annotations is None:
            return None
        text = annotations.read_text()
        if kind == "broken_json":
            annotations.write_text(text[: int(cut * (len(text) - 1))])
        else:
            data = json.loads(text)
            data["images"].append(dict(data["images"][pick % len(data["images"])]))
            annotations.write_text(json.dumps(data))
        return annotations, False
    image = one(source.images)
    if kind == "duplicate_id":
        twin = image.with_suffix(".png")
        Image.open(image).save(twin)
        return twin, source.fmt == "coco-stuff"  # COCO reads the file names its JSON lists, nothing else
    if kind == "folder_loop":
        (image.parent / "loop").symlink_to(".", target_is_directory=True)
        return image.parent / "loop", True  # harmless unless a parser walks into it forever
    image.unlink()
    if kind == "dangling_link":
        image.symlink_to(image.with_name("gone.jpg"))
    elif kind == "link_loop":
        image.symlink_to(image.name)
    else:  # folder_as_file
        image.mkdir()
    return image, False


def siblings(out: Path) -> set[str]:
    return {p.name for p in out.parent.iterdir()}


def check_complete(out: Path, stats: dict) -> None:
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == sum(stats["num_samples"].values())
    split = "train" if stats["num_samples"]["train"] else "val"
    PreparedDataset(out, split)[0]  # a sample reads back


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Each format's source and its cleanly prepared output, made once."""
    made = {}
    for name, source in SOURCES.items():
        root = tmp_path_factory.mktemp(f"pristine-{name}")
        src = source.make(root)
        ingest_dataset(source.fmt, src, root / "prepared", workers=1)
        made[name] = (src, root / "prepared")
    return made


@pytest.mark.parametrize("fmt", list(SOURCES))
@given(kind=st.sampled_from(DAMAGE), pick=st.integers(0, 99), cut=st.floats(0, 1), data=st.data())
@BUDGET
def test_damaged_sources_fail_in_one_line_or_skip_and_never_half_write(
    pristine, tmp_path_factory, fmt, kind, pick, cut, data
):
    source = SOURCES[fmt]
    pristine_src, pristine_out = pristine[fmt]
    root = tmp_path_factory.mktemp("case")
    src, out = root / pristine_src.name, root / "prepared"
    shutil.copytree(pristine_src, src, symlinks=True)
    shutil.copytree(pristine_out, out, symlinks=True)
    damaged = damage(src, source, kind, pick, cut)
    if damaged is None:
        event(f"{kind}: not applicable")
        return
    path, may_pass = damaged
    note(f"{kind} on {path}")
    before, beside = tree_digest(out), siblings(out)

    try:
        stats = ingest_dataset(source.fmt, src, out, workers=1, on_error="fail")
    except IngestError as err:
        message = str(err)
        event(f"{kind}: fail -> IngestError")
        assert "\n" not in message.strip(), message
        assert path.name in message or path.stem in message or path.parent.name in message, message
        assert tree_digest(out) == before, "the previous prepared dataset changed"
        assert siblings(out) == beside, f"left beside the output: {siblings(out) - beside}"
        refused = message
    else:
        event(f"{kind}: fail -> accepted")
        assert may_pass, f"{kind} on {path} went unnoticed"
        check_complete(out, stats)
        refused = None

    try:
        stats = ingest_dataset(source.fmt, src, out, workers=1, on_error="skip")
    except IngestError as err:  # the source as a whole is broken (its JSON, two files with one id)
        event(f"{kind}: skip -> IngestError")
        assert refused is not None and "\n" not in str(err).strip(), str(err)
        assert siblings(out) == beside
        return
    event(f"{kind}: skip -> {'listed' if stats['skipped'] else 'nothing skipped'}")
    check_complete(out, stats)
    assert siblings(out) == beside
    if refused is not None:
        listed = " ".join(f"{s['file']} {s['error']}" for s in stats["skipped"])
        assert stats["skipped"] and (path.name in listed or path.stem in listed), stats["skipped"]


def test_damage_kinds_cover_the_issue(tmp_path):
    """Every kind applies to at least one format (a kind that never applies tests nothing)."""
    used = set()
    for name, source in SOURCES.items():
        for kind in DAMAGE:
            src = source.make(tmp_path / f"{name}-{kind}")
            if damage(src, source, kind, 0, 0.5) is not None:
                used.add(kind)
    assert used == set(DAMAGE)
    assert os.sep not in "".join(DAMAGE)
