"""Ingest throughput on COCO-Stuff-shaped data: images/s at 640x480 with about 20 annotations each.

The source is synthetic but built from real annotation shapes: every image takes all annotations
(polygons and crowd RLEs) of one image of the real rikai subset (tests' fixtures), rescaled to
640x480; its stuffthingmap paints those things over random stuff blocks; its JPEG is textured
noise. Measured:

- ``pipeline``: ``pipeline.datasets.prepare`` of the coco-stuff source at 1 and 2 workers (fresh output each run),
- ``naive``: the same outputs the plain way, in one process: full JPEG decode, pycocotools
  ``COCO.annToMask`` per annotation painted on full frames, PIL's default PNG encoding,
- ``rasterize``: the instance-map step alone, the pipeline's RLE painting vs the annToMask loop.

Usage: ``python -m bench.ingest [--images 60] [--repeats 2] [--workers 1 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.workspace import PARAMS_FILE, ROOT

FIXTURES = ROOT.parent / "shared" / "fixtures" / "real"
W, H = 640, 480


def _rescale(ann: dict, sx: float, sy: float, src_hw: tuple[int, int]) -> dict:
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    out = dict(ann)
    if isinstance(seg, list):
        out["segmentation"] = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in seg]
    else:  # crowd RLE: decode, resize (nearest), re-encode uncompressed (column-major runs)
        m = mask_utils.decode(mask_utils.frPyObjects(seg, *src_hw))
        m = np.array(Image.fromarray(m).resize((W, H), Image.NEAREST)).astype(np.uint8)
        flat = m.T.ravel()
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate(([0], change, [flat.size]))
        runs = np.diff(bounds).tolist()
        if flat[0] == 1:
            runs = [0] + runs
        out["segmentation"] = {"counts": runs, "size": [H, W]}
    x, y, w, h = ann["bbox"]
    out["bbox"] = [x * sx, y * sy, w * sx, h * sy]
    return out


def build_source(root: Path, n_images: int, seed: int = 0) -> dict:
    """Write a COCO-Stuff source (layout of pipeline.datasets.coco_stuff) with ``n_images``."""
    from pipeline.datasets.coco_stuff import rasterize_instances

    real = json.loads((FIXTURES / "coco/instances_train2017_subset20_rikai.json").read_text())
    by_image = {im["id"]: [] for im in real["images"]}
    for a in real["annotations"]:
        by_image[a["image_id"]].append(a)
    rng = np.random.default_rng(seed)
    (root / "train2017").mkdir(parents=True)
    (root / "stuffthingmaps_trainval2017/train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    shutil.copy(FIXTURES / "cocostuff/labels.txt", root / "labels.txt")
    images, annotations = [], []
    for i in range(n_images):
        src = real["images"][i % len(real["images"])]
        sx, sy = W / src["width"], H / src["height"]
        image_id = 1_000_000 + i
        anns = []
        for k, a in enumerate(by_image[src["id"]]):
            b = _rescale(a, sx, sy, (src["height"], src["width"]))
            b["image_id"], b["id"] = image_id, image_id * 1000 + k
            anns.append(b)
        name = f"{image_id:012d}"
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": W, "height": H})
        annotations += anns
        # stuff: random blocks of stuff classes (91..181), then the things painted over them
        blocks = rng.integers(91, 182, size=(6, 8)).astype(np.uint8)
        label = np.kron(blocks, np.ones((H // 6, W // 8), np.uint8))
        label[rng.random((H, W)) < 0.0005] = 255
        rasterize_instances(anns, H, W, "instance", label)
        Image.fromarray(label).save(root / f"stuffthingmaps_trainval2017/train2017/{name}.png")
        noise = rng.integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((W, H), Image.BICUBIC).save(root / f"train2017/{name}.jpg", quality=90)
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": json.loads((FIXTURES / "coco/instances_val2017_small_airo.json").read_text())["categories"],
    }
    (root / "annotations/instances_train2017.json").write_text(json.dumps(doc))
    return {"images": n_images, "annotations": len(annotations), "per_image": len(annotations) / n_images}


def naive_ingest(src: Path, out: Path) -> None:
    """The same outputs the plain way: one process, annToMask on full frames, PIL defaults."""
    import contextlib

    from pycocotools.coco import COCO

    from gaugan.edges import instance_edges

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(src / "annotations/instances_train2017.json"))
    stems = {Path(im["file_name"]).stem: im["id"] for im in coco.dataset["images"]}
    for sub in ("images", "labels", "instances", "edges"):
        (out / sub / "train").mkdir(parents=True, exist_ok=True)
    for img_path in sorted((src / "train2017").glob("*.jpg")):
        stem = img_path.stem
        with Image.open(img_path) as im:
            rgb = np.array(im.convert("RGB"))
        (out / f"images/train/{stem}.jpg").write_bytes(img_path.read_bytes())
        label = np.array(Image.open(src / f"stuffthingmaps_trainval2017/train2017/{stem}.png"))
        assert label.shape == rgb.shape[:2]
        values = np.unique(label)
        assert ((values < 182) | (values == 255)).all()
        Image.fromarray(label).save(out / f"labels/train/{stem}.png")
        inst = np.zeros(label.shape, np.int32)
        for k, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=stems[stem], iscrowd=False)), 1):
            inst[coco.annToMask(ann) == 1] = k
        Image.fromarray(inst.astype(np.uint16)).save(out / f"instances/train/{stem}.png")
        Image.fromarray(instance_edges(inst)).save(out / f"edges/train/{stem}.png")


def raster_only(src: Path) -> dict:
    import contextlib

    from pycocotools.coco import COCO

    from pipeline.datasets.coco_stuff import rasterize_instances

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(src / "annotations/instances_train2017.json"))
    per_image = [coco.loadAnns(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    t0 = time.perf_counter()
    for anns in per_image:
        inst = np.zeros((H, W), np.int32)
        for k, ann in enumerate([a for a in anns if not a["iscrowd"]], 1):
            inst[coco.annToMask(ann) == 1] = k
    naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    for anns in per_image:
        rasterize_instances(anns, H, W, "ignore")
    fast = time.perf_counter() - t0
    n = len(per_image)
    return {
        "naive_ms_per_image": round(naive / n * 1e3, 2),
        "pipeline_ms_per_image": round(fast / n * 1e3, 2),
        "speedup": round(naive / fast, 2),
    }


def _best(fn, repeats: int) -> tuple[float, float]:
    """Best wall time and best CPU time (this process + its finished children) over ``repeats``."""
    import resource

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu() - c0)
    return min(walls), min(cpus)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import pandas  # noqa: F401 - imported up front so no timed run pays for it
    from pycocotools.coco import COCO  # noqa: F401

    from pipeline.datasets import prepare
    from pipeline.params import load_params

    data = load_params(PARAMS_FILE).data.model_copy(update={"format": "coco-stuff"})

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        shape = build_source(src, args.images)
        result = {"source": shape, "size": f"{W}x{H}", "cpu_count": os.cpu_count(), "images_per_s": {}}

        def pipeline(workers: int):
            out = tmp / f"out-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            prepare(data.model_copy(update={"workers": workers}), src, out, progress=False)

        def naive():
            out = tmp / "naive"
            shutil.rmtree(out, ignore_errors=True)
            naive_ingest(src, out)

        result["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
        result["cpu_ms_per_image"] = {}
        wall, cpu = _best(naive, args.repeats)
        result["images_per_s"]["naive_1_process"] = round(args.images / wall, 2)
        result["cpu_ms_per_image"]["naive_1_process"] = round(cpu / args.images * 1e3, 2)
        for w in args.workers:
            wall, cpu = _best(lambda w=w: pipeline(w), args.repeats)
            result["images_per_s"][f"pipeline_{w}_workers"] = round(args.images / wall, 2)
            result["cpu_ms_per_image"][f"pipeline_{w}_workers"] = round(cpu / args.images * 1e3, 2)
        ips = result["images_per_s"]
        cms = result["cpu_ms_per_image"]
        result["speedup_1_worker_vs_naive_cpu_time"] = round(cms["naive_1_process"] / cms["pipeline_1_workers"], 2)
        result["speedup_1_worker_vs_naive"] = round(ips["pipeline_1_workers"] / ips["naive_1_process"], 2)
        if len(args.workers) > 1:
            w = args.workers[-1]
            result[f"scaling_{w}_vs_1_workers"] = round(ips[f"pipeline_{w}_workers"] / ips["pipeline_1_workers"], 2)
        result["rasterize_only"] = raster_only(src)
        result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        # both ways produce the same maps (pipeline ids above the annotations are its background ids)
        from pipeline.datasets.prepared_files import export_files

        a, b = tmp / "pipeline-files", tmp / "naive"
        export_files(tmp / f"out-{args.workers[0]}", a)  # the shards' maps as files
        doc = json.loads((src / "annotations/instances_train2017.json").read_text())
        n_things = {}
        for ann in doc["annotations"]:
            n_things[ann["image_id"]] = n_things.get(ann["image_id"], 0) + (not ann["iscrowd"])
        same = True
        for im in doc["images"]:
            stem = Path(im["file_name"]).stem
            mine = np.array(Image.open(a / f"instances/train/{stem}.png")).astype(np.int64)
            ref = np.array(Image.open(b / f"instances/train/{stem}.png")).astype(np.int64)
            same &= np.array_equal(np.where(mine <= n_things.get(im["id"], 0), mine, 0), ref)
            same &= np.array_equal(
                np.array(Image.open(a / f"labels/train/{stem}.png")),
                np.array(Image.open(b / f"labels/train/{stem}.png")),
            )
        result["outputs_match_naive"] = bool(same)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
