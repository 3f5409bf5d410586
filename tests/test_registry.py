"""The register stage against a real SQLite MLflow store: promotion by metric, tags, rollback, loading.

One store per module: three trained "models" (tiny random generators, each in its own MLflow run)
are registered in turn with FID 10, 8 and 12: the first becomes champion, the better second takes
over, the worse third stays challenger. Then the champion is loaded back through the pyfunc
(``models:/NAME@champion``) and through :func:`pipeline.serving.synthesize.synthesize`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_params
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.errors import ModelNotFoundError, RegistryError
from pipeline.stages.register import run as run_register

NAME = "gaugan-toy"
CLASSES = ClassTable(dataset="toy", names=("sky", "grass", "rock"), colors=((0, 0, 255), (0, 255, 0), (128, 128, 128)))


def tiny_generator(path: Path, seed: int, **overrides) -> None:
    import torch

    from gaugan.checkpoint import save_generator
    from gaugan.config import GauGANConfig
    from gaugan.generator import SPADEGenerator

    settings = dict(label_nc=3, use_instance=True, ngf=4, z_dim=8, spade_hidden=8, crop_size=64)
    settings.update(overrides)
    config = GauGANConfig(**settings)
    torch.manual_seed(seed)
    save_generator(
        path,
        SPADEGenerator(config),
        None,
        config,
        CLASSES,
        {"dataset_id": f"data-{seed}", "steps": 3, "git_commit": f"{seed:040d}"},
    )


def params(root: Path, **register):
    """The recorded-number rule (if_better) unless told otherwise: these fake evaluations keep no
    per-image evidence (tests/test_promotion.py covers if_significant)."""
    return make_params({"register": {"promote": "if_better", **register}})


def fake_training(root: Path, uri: str, seed: int, fid: float) -> str:
    """What train and evaluate leave behind: generator file, run.json (a real run), metrics.json."""
    import mlflow

    from pipeline.tracking import RunRef, ensure_experiment, write_run_ref

    tiny_generator(root / "models/generator.pt", seed)
    experiment = ensure_experiment("gaugan-toy", uri)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(experiment, run_name=f"train-{seed}")
    client.set_terminated(run.info.run_id)
    write_run_ref(root / "outputs/train/run.json", RunRef(run.info.run_id, uri, "gaugan-toy"))
    metrics = {
        "fid": fid,
        "kid_mean": fid / 100,
        "miou": 0.5,
        "accuracy": 0.7,
        "num_images": 6,
        "height": 64,
        "width": 64,
        "paper_comparable": False,
        "backbone": {"name": "tiny-cnn-seed0", "feature_dim": 16},
        "comparability": {
            "eval_dataset_id": "data-toy",
            "eval_split_id": "val-toy",
            "eval_num_images": "6",
            "eval_resolution": "64x64",
            "style_source": "none",
            "fid_backbone": "tiny-cnn-seed0",
            "segmenter_id": "seg-1",
        },
    }
    (root / "outputs/evaluate").mkdir(parents=True, exist_ok=True)
    (root / "outputs/evaluate/metrics.json").write_text(json.dumps(metrics))
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three registrations: FID 10 (first: champion), 8 (better: champion), 12 (worse: challenger)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    results, runs = [], []
    for seed, fid in [(1, 10.0), (2, 8.0), (3, 12.0)]:
        runs.append(fake_training(root, uri, seed, fid))
        results.append(run_register(params(root), root))
        results[-1]["file"] = json.loads((root / "outputs/register/registration.json").read_text())
    return root, uri, results, runs


def aliases(uri: str) -> dict:
    import mlflow

    return {k: str(v) for k, v in mlflow.MlflowClient(uri).get_registered_model(NAME).aliases.items()}


def versions(uri: str) -> list[int]:
    import mlflow

    return sorted(int(v.version) for v in mlflow.MlflowClient(uri).search_model_versions(f"name='{NAME}'"))


def test_first_becomes_champion_better_is_promoted_worse_is_kept_out(store):
    root, uri, (first, second, third), _ = store
    assert first["promoted"] is True and first["version"] == 1 and first["champion_value_before"] is None
    assert second["promoted"] is True and second["version"] == 2 and second["champion_value_before"] == 10.0
    assert third["promoted"] is False and third["version"] == 3 and third["champion_value_before"] == 8.0
    assert third["champion_version_before"] == 2 and "not better" in third["reason"]
    assert third["aliases"] == ["challenger"] and second["aliases"] == ["challenger", "champion"]
    assert aliases(uri) == {"champion": "2", "challenger": "3"}
    for result in (first, second, third):
        assert result["file"] == {k: v for k, v in result.items() if k != "file"}
        assert result["name"] == NAME and result["metric"] == "fid"


def test_versions_carry_provenance_and_metrics(store):
    import mlflow

    root, uri, results, runs = store
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version(NAME, "3")
    assert version.run_id == runs[2]
    tags = version.tags
    assert tags["git_commit"] == f"{3:040d}" and tags["dataset_id"] == "data-3" and tags["dataset"] == "toy"
    assert float(tags["metric.fid"]) == 12.0 and float(tags["metric.miou"]) == 0.5
    assert "metric.paper_comparable" not in tags  # booleans are not metrics
    assert tags["fid_backbone"] == "tiny-cnn-seed0" and tags["eval_resolution"] == "64x64"
    assert tags["eval_dataset_id"] == "data-toy" and tags["eval_num_images"] == "6" and tags["style_source"] == "none"
    assert tags["eval_split_id"] == "val-toy"
    assert tags["segmenter_id"] == "seg-1" and tags["paper_comparable"] == "false"
    assert (
        tags["validation_status"] == "challenger"
        and client.get_model_version(NAME, "2").tags["validation_status"] == "champion"
    )
    assert len(tags["generator_sha256"]) == 64 and tags["netG"] == "spade"
    # the training run holds the pyfunc model and the raw checkpoint
    artifacts = [a.path for a in client.list_artifacts(runs[2], "checkpoint")]
    assert artifacts == ["checkpoint/generator.pt"]
    assert client.get_run(runs[2]).data.tags["registered_version"] == "3"
    assert results[2]["logged_model_uri"].startswith("models:/m-")


def test_champion_loads_through_pyfunc_and_synthesize(store, tmp_path):
    import mlflow

    from pipeline.serving.synthesize import synthesize

    root, uri, _, _ = store
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", model_config={"device": "cpu"})
    names = model.metadata.get_input_schema().input_names()
    assert names == ["label", "instance"]
    labels = np.zeros((2, 48, 80), dtype=np.int64)
    labels[:, 20:, :] = 1
    labels[1, :, 40:] = 255
    images = model.predict({"label": labels, "instance": labels.copy()}, params={"seed": 0})
    assert images.shape == (2, 48, 80, 3) and images.dtype == np.uint8

    label_png = tmp_path / "map.png"
    Image.fromarray(labels[0].astype(np.uint8)).save(label_png)
    out = synthesize(
        f"models:/{NAME}@champion", label_png, tmp_path / "out/image.png", instance_path=label_png, tracking_uri=uri
    )
    image = np.array(Image.open(out))
    assert image.shape == (48, 80, 3)
    # a batch of 2 against 1 alone: the channels_last kernels may round differently by batch size
    assert np.abs(image.astype(int) - images[0]).max() <= 1
    # the same version by number, and the same generator file used directly: the same pixels
    by_version = synthesize(
        f"models:/{NAME}/2", label_png, tmp_path / "v2.png", instance_path=label_png, tracking_uri=uri
    )
    np.testing.assert_array_equal(np.array(Image.open(by_version)), image)
    local = tmp_path / "g2.pt"
    tiny_generator(local, seed=2)
    np.testing.assert_array_equal(
        np.array(Image.open(synthesize(str(local), label_png, tmp_path / "local.png", instance_path=label_png))), image
    )


def test_unknown_alias_version_or_model_lists_what_exists(store, tmp_path):
    from gaugan.errors import InputError
    from pipeline.serving.synthesize import synthesize

    root, uri, _, _ = store
    label_png = tmp_path / "map.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(label_png)
    with pytest.raises(
        ModelNotFoundError, match=r"no alias 'production'.*@challenger \(version 3\).*@champion \(version 2\)"
    ):
        synthesize(f"models:/{NAME}@production", label_png, tmp_path / "x.png", tracking_uri=uri)
    with pytest.raises(ModelNotFoundError, match=r"no version '7'; versions: \[1, 2, 3\]"):
        synthesize(f"models:/{NAME}/7", label_png, tmp_path / "x.png", tracking_uri=uri)
    with pytest.raises(ModelNotFoundError, match=r"no registered model 'gaugan-nope'.*registered models: gaugan-toy"):
        synthesize("models:/gaugan-nope@champion", label_png, tmp_path / "x.png", tracking_uri=uri)
    Image.fromarray(np.full((32, 32), 7, dtype=np.uint8)).save(label_png)
    with pytest.raises(InputError, match=r"label values 7 are outside the class table of 'toy'"):
        synthesize(f"models:/{NAME}@champion", label_png, tmp_path / "x.png", tracking_uri=uri)
    assert not (tmp_path / "x.png").exists()


def test_a_failure_after_registration_leaves_the_registry_as_it_was(store, monkeypatch):
    import pipeline.registry.versions as registry

    root, uri, _, _ = store
    before_file = (root / "outputs/register/registration.json").read_bytes()
    fake_training(root, uri, seed=4, fid=1.0)  # would be promoted

    def broken_write(path, obj):
        raise OSError("disk full")

    import mlflow

    created = []
    real_create = mlflow.MlflowClient.create_model_version

    def spy_create(self, *args, **kwargs):
        version = real_create(self, *args, **kwargs)
        created.append(version.version)
        return version

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", spy_create)
    monkeypatch.setattr(registry, "atomic_write_json", broken_write)
    with pytest.raises(RegistryError, match="restored: disk full"):
        run_register(params(root), root)
    assert [str(v) for v in created] == ["4"]  # it was created (and promoted) before the failure ...
    assert aliases(uri) == {"champion": "2", "challenger": "3"}  # ... and undone
    assert versions(uri) == [1, 2, 3]
    assert (root / "outputs/register/registration.json").read_bytes() == before_file


def test_a_failed_first_registration_leaves_no_registered_model(store, monkeypatch):
    import mlflow

    import pipeline.registry.versions as registry

    root, uri, _, _ = store
    fake_training(root, uri, seed=5, fid=3.0)
    monkeypatch.setattr(registry, "atomic_write_json", lambda path, obj: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(RegistryError):
        run_register(params(root, model_name="gaugan-other"), root)
    assert [m.name for m in mlflow.MlflowClient(uri).search_registered_models()] == [NAME]


def test_missing_or_non_numeric_metric_names_the_metric_and_file(store):
    root, uri, _, _ = store
    with pytest.raises(RegistryError, match=r"'lpips' is not in .*metrics\.json; its metrics: accuracy, fid"):
        run_register(params(root, metric="lpips"), root)
    metrics = json.loads((root / "outputs/evaluate/metrics.json").read_text())
    (root / "outputs/evaluate/metrics.json").write_text(json.dumps({**metrics, "fid": None}))
    with pytest.raises(RegistryError, match=r"'fid' in .*metrics\.json is None, not a finite number"):
        run_register(params(root), root)
    assert versions(uri) == [1, 2, 3]


class FakeVersion:
    def __init__(self, version, **tags):
        self.version, self.tags = str(version), {k.replace("__", "."): v for k, v in tags.items()}


SAME = {
    "eval_dataset_id": "d1",
    "eval_split_id": "v1",
    "eval_num_images": "500",
    "eval_resolution": "256x512",
    "style_source": "none",
    "fid_backbone": "inception-v3",
    "segmenter_id": "drn-1",
}


def test_decide_direction_policy_and_comparability():
    from pipeline.registry.versions import decide

    champion = FakeVersion(4, metric__fid="10.0", metric__miou="0.5", **SAME)
    same = dict(SAME)
    assert decide(9.0, same, champion, "fid", False)[:2] == (True, 10.0)
    assert decide(10.0, same, champion, "fid", False)[0] is False  # a tie keeps the champion
    assert decide(0.6, same, champion, "miou", True)[0] is True
    assert decide(0.4, same, champion, "miou", True)[0] is False
    promoted, _, reason = decide(1.0, {**same, "fid_backbone": "tiny-cnn-seed0"}, champion, "fid", False)
    assert promoted is False and "not comparable" in reason and "fid_backbone" in reason
    assert decide(0.9, {**same, "fid_backbone": "tiny-cnn-seed0"}, champion, "miou", True)[0] is True  # no backbone
    assert decide(99.0, same, champion, "fid", False, "always")[0] is True
    assert decide(1.0, same, champion, "fid", False, "never")[0] is False
    assert decide(1.0, same, None, "fid", False) == (True, None, "no champion yet")
    assert decide(1.0, same, FakeVersion(1), "fid", False)[0] is True  # champion without the metric


def test_registry_refuses_to_compare_across_datasets_or_segmenters_and_says_which_differs():
    from pipeline.registry.versions import decide

    champion = FakeVersion(7, metric__fid="30.0", metric__miou="0.4", **SAME)
    promoted, value, reason = decide(0.9, {**SAME, "segmenter_id": "unet-9"}, champion, "miou", True)
    assert promoted is False and value == 0.4
    assert "segmenter_id is 'unet-9' here and 'drn-1' for the champion (version 7)" in reason
    # FID does not depend on the segmenter: the same change leaves FID comparable
    assert decide(20.0, {**SAME, "segmenter_id": "unet-9"}, champion, "fid", False)[0] is True

    other_data = {**SAME, "eval_split_id": "v2", "eval_num_images": "50"}
    for metric, value in (("fid", 1.0), ("miou", 0.99)):
        promoted, _, reason = decide(value, other_data, champion, metric, metric == "miou")
        assert promoted is False
        assert "eval_split_id is 'v2' here and 'v1'" in reason and "eval_num_images is '50' here and '500'" in reason
        assert "style_source" not in reason  # only what differs is named
    # the training split grew (another dataset id), the validation split did not: comparable
    grown = {**SAME, "eval_dataset_id": "d3"}
    assert decide(20.0, grown, champion, "fid", False)[0] is True
    assert decide(0.3, grown, champion, "miou", True)[0] is False
    promoted, _, reason = decide(1.0, {**SAME, "style_source": "encoded-real"}, champion, "fid", False)
    assert promoted is False and "style_source is 'encoded-real' here and 'none'" in reason
    # a champion registered before these tags existed cannot be compared: said so, never assumed equal
    old = FakeVersion(3, metric__fid="30.0", fid_backbone="inception-v3", eval_resolution="256x512")
    promoted, _, reason = decide(1.0, SAME, old, "fid", False)
    assert promoted is False and "eval_split_id is not recorded for the champion (version 3)" in reason
