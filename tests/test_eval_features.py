"""FID/KID feature extractors: torch-fidelity agreement, weights resolution, the tiny backbone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import FeatureWeightsError
from pipeline.evaluation.feature_stats import frechet_distance
from pipeline.evaluation.features import (
    INCEPTION_FILENAMES,
    build_backbone,
    inception_backbone,
    resolve_inception_weights,
    tiny_backbone,
    write_surrogate_inception_weights,
)
from pipeline.evaluation.metrics import compute_fid, compute_kid

N_IMAGES = 8


@pytest.fixture(scope="session")
def surrogate_weights(tmp_path_factory) -> Path:
    """A stand-in weights file for the FID Inception architecture (the real one cannot be downloaded here)."""
    return write_surrogate_inception_weights(tmp_path_factory.mktemp("inception") / "surrogate-inception.pth", seed=0)


def _blobs(n: int, seed: int, size: int = 64) -> np.ndarray:
    """Smooth colour fields with a few rectangles: uint8 [n,size,size,3]."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = rng.uniform(0, 255, 3) * (1 - yy[..., None]) + rng.uniform(0, 255, 3) * xx[..., None]
        for _ in range(3):
            y, x, h, w = rng.integers(0, size - 16, 4)
            base[y : y + h // 2 + 8, x : x + w // 2 + 8] = rng.uniform(0, 255, 3)
        out[i] = np.clip(base / 2 + 64, 0, 255)
    return out


def _stripes(n: int, seed: int, size: int = 64) -> np.ndarray:
    """High-frequency coloured stripes and noise: a clearly different image distribution."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    x = np.arange(size)
    for i in range(n):
        period = rng.integers(3, 8)
        stripes = ((x // period) % 2).astype(np.float64)
        img = np.stack([np.tile(stripes, (size, 1)) * rng.uniform(100, 255) for _ in range(3)], -1)
        out[i] = np.clip(img + rng.normal(0, 30, img.shape), 0, 255)
    return out


def _write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def _read_folder(folder: Path) -> torch.Tensor:
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_fid_and_kid_match_torch_fidelity_on_the_same_weights_and_folders(surrogate_weights, tmp_path):
    from torch_fidelity import calculate_metrics

    # Two draws of the same kind of image: the covariance (trace) term is most of the distance,
    # so the agreement covers the matrix square root, not only the means.
    real_dir = _write_folder(tmp_path / "real", _blobs(N_IMAGES, seed=1))
    fake_dir = _write_folder(tmp_path / "fake", _blobs(N_IMAGES, seed=2))

    backbone = inception_backbone(surrogate_weights)
    assert backbone.info["paper_comparable"] is False  # the surrogate's sha256 is not the real file's
    assert backbone.info["name"] == "inception-v3-arch-other-weights-" + backbone.info["weights_sha256"][:8]
    assert backbone.info["resize"] == "tf1-bilinear-299"
    real = backbone.extract(_read_folder(real_dir))
    fake = backbone.extract(_read_folder(fake_dir))
    assert real.shape == (N_IMAGES, 2048)
    fid = compute_fid(real, fake)
    kid_mean, kid_std, size = compute_kid(real, fake, subset_size=N_IMAGES, subsets=3)
    mean_term = float((real.double().mean(0) - fake.double().mean(0)).square().sum())

    ref = calculate_metrics(
        input1=str(fake_dir),
        input2=str(real_dir),
        cuda=False,
        fid=True,
        kid=True,
        kid_subset_size=N_IMAGES,  # every subset is the whole set: KID is exact, no sampling noise
        kid_subsets=3,
        feature_extractor_weights_path=str(surrogate_weights),
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )
    assert fid == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    assert kid_mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-3)
    assert kid_std is None and size == N_IMAGES  # the whole set at once: exact, and no spread to report
    assert mean_term < 0.6 * fid
    # the bootstrap's own Frechet distance (n x n route, fewer images than dimensions) is the same number
    assert frechet_distance(real, fake) == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    # Not degenerate: a plain random init gives FID ~1e-12 between any two image sets.
    assert fid > 10 and kid_mean > 0.01


def test_missing_inception_weights_says_which_file_where_and_how_to_opt_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(FeatureWeightsError) as err:
        build_backbone("inception")
    msg = str(err.value)
    for needle in (
        *INCEPTION_FILENAMES,
        str(tmp_path / "torch-home" / "hub" / "checkpoints"),
        "evaluate.inception_weights",
        "evaluate.feature_extractor: tiny",
        "evaluate.allow_download",
    ):
        assert needle in msg
    with pytest.raises(FeatureWeightsError, match="nowhere.pth, which does not exist"):
        resolve_inception_weights(tmp_path / "nowhere.pth")
    # The missing-file error is a FileNotFoundError, so the CLI reports it as a stage error.
    assert issubclass(FeatureWeightsError, FileNotFoundError)


def test_inception_weights_found_in_the_hub_cache_and_checked(surrogate_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    hub = tmp_path / "th" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(surrogate_weights, hub / "pt_inception-2015-12-05-6726825d.pth")  # pytorch-fid's name
    assert resolve_inception_weights() == hub / "pt_inception-2015-12-05-6726825d.pth"
    # the project's weights folder (a DVC dependency) comes before the hub cache
    project = tmp_path / "weights"
    project.mkdir()
    shutil.copy(surrogate_weights, project / INCEPTION_FILENAMES[0])
    assert resolve_inception_weights(weights_dir=project) == project / INCEPTION_FILENAMES[0]
    # A file of another architecture is refused with a clear message (never silently random).
    wrong = tmp_path / "wrong.pth"
    torch.save(tiny_backbone(16).module.state_dict(), wrong)
    with pytest.raises(FeatureWeightsError, match="not the FID Inception"):
        inception_backbone(wrong)


def test_tiny_backbone_is_deterministic_and_not_degenerate():
    a, b = tiny_backbone(64), tiny_backbone(64)
    assert a.info["weights_sha256"] == b.info["weights_sha256"]
    assert a.info["paper_comparable"] is False and a.info["name"].startswith("tiny-cnn")
    blobs = torch.from_numpy(_blobs(12, seed=3)).permute(0, 3, 1, 2)
    fa, fb = a.extract(blobs), b.extract(blobs)
    assert fa.shape == (12, 64)
    assert torch.equal(fa, fb)
    # Channels-last numpy-style input gives the same features.
    assert torch.equal(a.extract(blobs.permute(0, 2, 3, 1)), fa)
    # Features vary across images (per-dimension spread well above zero) ...
    assert fa.std(0).mean() > 0.05 * fa.abs().mean()
    # ... and separate distributions: blobs vs stripes far apart, blobs vs other blobs close.
    other_blobs = a.extract(torch.from_numpy(_blobs(12, seed=4)).permute(0, 3, 1, 2))
    stripes = a.extract(torch.from_numpy(_stripes(12, seed=5)).permute(0, 3, 1, 2))
    assert compute_fid(fa, stripes) > 5 * compute_fid(fa, other_blobs) > 0
    # Another seed is another network.
    assert tiny_backbone(64, seed=1).info["weights_sha256"] != a.info["weights_sha256"]
    with pytest.raises(TypeError, match="uint8"):
        a.extract(blobs.float())
