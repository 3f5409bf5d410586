"""What an evaluation's numbers can be compared with: the paper's, and other runs'.

``paper_comparable`` is true only when every condition of the published protocol holds (SPADE,
Park et al. 2019, section 4, with pytorch-fid's Inception): the official FID Inception weights
(full sha256), the 2048-d pool3 features, a dataset with a published protocol evaluated on its
whole validation split (as many images as the paper's) at the paper's resolution, every label map
given, and images synthesized from the label map alone (no style encoded from the real photo).
Each failed condition is a reason, written to ``metrics.json`` and as an MLflow tag.

The comparability record (:func:`comparability_record`) holds what two runs must share before
their numbers are set side by side (the registry and ``gaugan-pipeline compare`` read it): the
validation split's identity (``eval_split_id``: its samples and the class table, not the training
split, which grows), image count, resolution, style source; the FID backbone for FID-like numbers
and the segmenter's identity for mIoU-like ones. ``eval_dataset_id`` (the whole dataset) is
recorded beside them for provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.evaluation.features import INCEPTION_SHA256


@dataclass(frozen=True)
class PaperProtocol:
    val_images: int
    hw: tuple[int, int]  # (height, width) of the published numbers


# SPADE's evaluation sets and sizes (section 4 and the reference data loaders); the keys are
# ClassTable.dataset names written by the ingest parsers (Cityscapes: a folder or spade source
# whose classes.json says "dataset": "cityscapes").
PAPER_PROTOCOLS = {
    "coco-stuff": PaperProtocol(5000, (256, 256)),
    "ade20k": PaperProtocol(2000, (256, 256)),
    "ade20k-full": PaperProtocol(2000, (256, 256)),
    "cityscapes": PaperProtocol(500, (256, 512)),
}
PAPER_STYLE_SOURCES = ("none", "random")


@dataclass(frozen=True)
class EvaluationFacts:
    dataset: str  # ClassTable.dataset
    split_size: int  # validation images in the prepared dataset
    num_images: int  # validation images evaluated
    hw: tuple[int, int]
    backbone: dict  # FeatureBackbone.info
    style_source: str  # none | random | encoded-real
    unlabelled_maps: int  # validation label maps without a single labelled pixel


def paper_comparability(f: EvaluationFacts) -> tuple[bool, list[str]]:
    """(paper_comparable, the reasons it is not: one sentence per failed condition)."""
    reasons = []
    b = f.backbone
    if not str(b.get("name", "")).startswith("inception"):
        reasons.append(
            f"the FID features come from {b.get('name')}, not the FID Inception (evaluate.feature_extractor)"
        )
    elif b.get("weights_sha256") != INCEPTION_SHA256:
        reasons.append(
            f"the Inception weights {b.get('weights_file')} have sha256 {b.get('weights_sha256')}, not the official "
            f"file's {INCEPTION_SHA256}"
        )
    if b.get("feature_dim") != 2048:
        reasons.append(f"features of {b.get('feature_dim')} dimensions, not Inception's 2048-d pool3")
    protocol = PAPER_PROTOCOLS.get(f.dataset)
    if protocol is None:
        reasons.append(f"the dataset {f.dataset!r} has no published protocol (known: {', '.join(PAPER_PROTOCOLS)})")
    else:
        if f.split_size != protocol.val_images:
            reasons.append(
                f"the validation split has {f.split_size} images; the paper's {f.dataset} split has "
                f"{protocol.val_images}"
            )
        if tuple(f.hw) != protocol.hw:
            reasons.append(
                f"evaluated at {f.hw[0]}x{f.hw[1]}; the paper evaluated {f.dataset} at "
                f"{protocol.hw[0]}x{protocol.hw[1]}"
            )
    if f.num_images < f.split_size:
        reasons.append(f"{f.num_images} of the {f.split_size} validation images were evaluated (evaluate.max_images)")
    if f.unlabelled_maps:
        reasons.append(f"{f.unlabelled_maps} validation label maps have no labelled pixel")
    if f.style_source not in PAPER_STYLE_SOURCES:
        reasons.append(
            "style codes were encoded from the real photos (evaluate.vae_style: real), which makes FID a "
            "reconstruction score; the published numbers synthesize from the label map alone (vae_style: random)"
        )
    return not reasons, reasons


def style_source(use_vae: bool, vae_style: str) -> str:
    """none (no style encoder) | random (prior noise, seeded per image) | encoded-real (the real photo's code)."""
    if not use_vae:
        return "none"
    return "encoded-real" if vae_style == "real" else "random"


def comparability_record(
    dataset_id: str, split_id: str, num_images: int, hw: tuple[int, int], style: str, backbone: str, segmenter_id: str
) -> dict[str, str]:
    """The tags two evaluations must share to be compared (see ``pipeline.registry.versions.comparability_keys``),
    and the whole dataset's id (provenance only)."""
    return {
        "eval_dataset_id": dataset_id,
        "eval_split_id": split_id,
        "eval_num_images": str(num_images),
        "eval_resolution": f"{hw[0]}x{hw[1]}",
        "style_source": style,
        "fid_backbone": backbone,
        "segmenter_id": segmenter_id,
    }
