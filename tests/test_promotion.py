"""Promotion on evidence: per-image evidence, the paired bootstrap, and ``register.promote: if_significant``
against a real SQLite MLflow registry (the champion's stored evidence reused, or the champion scored
again on today's terms), with the validation split's identity deciding what is comparable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TOY_NAMES, make_params, toy_classes, write_tiny_generator, write_toy_prepared
from PIL import Image
from test_eval_stage import tiny_override

from gaugan.classes import ClassTable
from gaugan.data import dataset_id, val_split_id
from pipeline.evaluation.evidence import Evidence, metric_value, paired_bootstrap
from pipeline.evaluation.metrics import ConfusionAccumulator, scores_from_counts
from pipeline.registry.promotion import verdict
from pipeline.stages.evaluate import run as run_evaluate
from pipeline.stages.register import run as run_register
from pipeline.stages.train_segmenter import run as run_train_segmenter

NAME = "gaugan-toy"


# ------------------------------------------------------------------------------------------------
# the statistics, on synthetic per-image evidence


def synthetic(real: np.ndarray, shift: float, quality: float, seed: int) -> Evidence:
    """A model whose features sit ``shift`` away from the real ones and whose images the segmenter
    reads right with probability ``quality`` (3 classes, 80-160 pixels each per image)."""
    rng = np.random.default_rng(seed)
    n = len(real)
    union = rng.integers(80, 160, (n, 3))
    inter = rng.binomial(union, quality)
    return Evidence(
        ids=np.array([f"val-{i:03d}" for i in range(n)]),
        fake_features=(rng.normal(size=real.shape) + shift).astype(np.float32),
        real_features=real,
        inter=inter,
        union=union,
        correct=inter.sum(1),
        labelled=union.sum(1),
        meta={"ignore": [], "average": "present", "kid": {"subset_size": 1000, "subsets": 100, "seed": 0}},
    )


def settings(metric: str, **register):
    better_high = metric in ("miou", "accuracy")
    return make_params(
        {"register": {"metric": metric, "greater_is_better": better_high, "bootstrap": 300, **register}}
    ).registry


@pytest.mark.parametrize("metric", ["fid", "kid_mean", "miou", "accuracy"])
def test_a_clearly_better_model_is_promoted_and_a_second_draw_of_the_champion_is_not(metric):
    real = np.random.default_rng(0).normal(size=(80, 16)).astype(np.float32)
    champion = synthetic(real, shift=1.0, quality=0.5, seed=1)
    better = synthetic(real, shift=0.2, quality=0.7, seed=2)
    twin = synthetic(real, shift=1.0, quality=0.5, seed=3)  # the champion's distribution, another draw
    s = settings(metric)

    result = paired_bootstrap(better, champion, metric, s.greater_is_better, s.bootstrap, s.confidence, seed=0)
    assert result["challenger"] == metric_value(better, metric) and result["champion"] == metric_value(champion, metric)
    assert result["improvement"] > 0 and 0 < result["ci_low"] < result["improvement"] < result["ci_high"]
    decision = verdict(result, s, 4, "its stored evidence", None)
    assert decision.promoted is True and "; promoted: the interval lies above zero" in decision.reason
    assert decision.tags["promotion_champion_version"] == "4" and decision.record["significant"] is True

    same = paired_bootstrap(twin, champion, metric, s.greater_is_better, s.bootstrap, s.confidence, seed=0)
    assert same["ci_low"] < 0 < same["ci_high"]
    decision = verdict(same, s, 4, "its stored evidence", None)
    assert decision.promoted is False and "not promoted: the interval does not lie above zero" in decision.reason

    # significant, but smaller than asked for
    strict = settings(metric, min_improvement=2 * result["improvement"])
    decision = verdict(result, strict, 4, "its stored evidence", None)
    assert decision.promoted is False and "below register.min_improvement" in decision.reason
    # the other way round: the champion is the better one, the interval lies below zero
    back = paired_bootstrap(champion, better, metric, s.greater_is_better, s.bootstrap, s.confidence, seed=0)
    assert back["ci_high"] < 0 and back["improvement"] == pytest.approx(-result["improvement"])


def test_a_resample_drawing_every_image_once_gives_the_split_values():
    """The replicates' shortcuts (KID from draw counts, mIoU from summed counts) agree with the split's metric
    (FID: float64 here, torchmetrics there when images outnumber dimensions)."""
    from pipeline.evaluation.evidence import _replicates
    from pipeline.evaluation.metrics import compute_kid

    real = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    ev = synthetic(real, shift=0.5, quality=0.6, seed=1)
    once = np.random.default_rng(1).permutation(30)[None]
    kid = compute_kid(torch.from_numpy(real), torch.from_numpy(ev.fake_features), subset_size=30)[0]
    assert _replicates(ev, "kid_mean", once)[0] == pytest.approx(kid, rel=1e-4, abs=1e-7)
    for metric in ("fid", "miou", "accuracy"):
        assert _replicates(ev, metric, once)[0] == pytest.approx(metric_value(ev, metric), rel=1e-6), metric


def test_if_significant_needs_a_metric_with_per_image_evidence():
    from pipeline.errors import ParamsError

    with pytest.raises(ParamsError, match=r"if_significant compares fid, kid_mean, miou, accuracy.*'precision'"):
        settings("precision")
    assert settings("precision", promote="if_better").metric == "precision"


def test_the_paired_bootstrap_refuses_evidence_of_other_images():
    from pipeline.errors import EvaluationError

    real = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    a, b = synthetic(real, 0.0, 0.5, 1), synthetic(real, 0.0, 0.5, 2)
    b = Evidence(**{**b.__dict__, "ids": np.array([f"other-{i}" for i in range(10)])})
    with pytest.raises(EvaluationError, match="scored different images"):
        paired_bootstrap(a, b, "fid", False, 10, 0.95, seed=0)


def test_per_image_counts_sum_to_the_split_scores_with_ignored_classes_and_unmapped_outputs():
    """Per image: intersection = pixels where truth and prediction are c; union = scored pixels where
    either is c (counted here independently); their sums give the split's mIoU and accuracy exactly."""
    rng = np.random.default_rng(0)
    n, ignore = 5, [3]
    target = rng.integers(0, n, (6, 12, 12))
    target[:, 0] = 255
    pred = rng.integers(0, n + 1, (6, 12, 12))  # n: an output with no dataset class (a class map's gap)
    for average in ("present", "all"):
        acc = ConfusionAccumulator(n, ignore, average, per_image=True)
        acc.update(pred[:4], target[:4])
        acc.update(pred[4:], target[4:])
        counts, split = acc.per_image_counts(), acc.scores()
        for i in range(6):
            keep = (target[i] != 255) & ~np.isin(target[i], ignore)
            t, p = target[i][keep], pred[i][keep]
            expected = [((t == c) & (p == c)).sum() for c in range(n)], [((t == c) | (p == c)).sum() for c in range(n)]
            np.testing.assert_array_equal(counts["inter"][i], expected[0])
            np.testing.assert_array_equal(counts["union"][i], expected[1])
            assert counts["correct"][i] == (t == p).sum() and counts["labelled"][i] == keep.sum()
        _, miou, accuracy = scores_from_counts(
            counts["inter"].sum(0),
            counts["union"].sum(0),
            int(counts["correct"].sum()),
            int(counts["labelled"].sum()),
            ignore,
            average,
        )
        assert miou == split.miou and accuracy == split.accuracy


# ------------------------------------------------------------------------------------------------
# the validation split's identity


def test_val_split_id_ignores_the_training_split_and_follows_the_validation_rows_and_classes(tmp_path):
    root = write_toy_prepared(tmp_path / "data", n_train=3, n_val=2)
    before = dataset_id(root), val_split_id(root)
    manifest = pd.read_parquet(root / "manifest.parquet")
    extra = manifest[manifest["split"] == "train"].iloc[:1].assign(id="train-new", source_hash="new")
    pd.concat([manifest, extra]).to_parquet(root / "manifest.parquet", index=False)
    assert dataset_id(root) != before[0] and val_split_id(root) == before[1]  # the training split grew
    changed = manifest.copy()
    changed.loc[changed["split"] == "val", "source_hash"] = "edited"
    changed.to_parquet(root / "manifest.parquet", index=False)
    assert val_split_id(root) != before[1]
    manifest.to_parquet(root / "manifest.parquet", index=False)
    (root / "classes.json").write_text(json.dumps(toy_classes((*TOY_NAMES, "snow")).to_dict()))
    assert val_split_id(root) != before[1]  # an appended class: another table, another split identity


# ------------------------------------------------------------------------------------------------
# the evaluate stage's evidence, and the register stage with if_significant


def _override(segmenter_steps: int = 4, **evaluate) -> dict:
    """test_eval_stage's tiny settings; a segmenter of a few steps (its quality does not matter here)."""
    override = tiny_override(stats_cache=None, **evaluate)
    override["segmenter"]["steps"] = segmenter_steps
    return override


def _params(segmenter_steps: int = 4, **register):
    return make_params({**_override(segmenter_steps), "register": {"bootstrap": 200, **register}})


def _trained(root: Path, uri: str, seed: int, classes: ClassTable | None = None, **model) -> str:
    """What train leaves: the generator file and run.json naming a real MLflow run (then evaluated)."""
    import mlflow

    from pipeline.tracking import RunRef, ensure_experiment, write_run_ref

    params = _params()
    classes = classes or ClassTable.load(root / params.data.out)
    write_tiny_generator(root / params.train.model_out, classes, seed=seed, meta={"steps": seed, **model})
    client = mlflow.MlflowClient(uri)
    run = client.create_run(ensure_experiment(NAME, uri), run_name=f"train-{seed}")
    client.set_terminated(run.info.run_id)
    write_run_ref(root / params.train.out_dir / "run.json", RunRef(run.info.run_id, uri, NAME))
    return run.info.run_id


def _project(root: Path) -> tuple[Path, str]:
    """Prepared toy data, a trained tiny segmenter, and an MLflow store."""
    write_toy_prepared(root / _params().data.out)
    run_train_segmenter(_params(), root)
    return root, f"sqlite:///{root / 'mlflow.db'}"


def test_evaluate_writes_per_image_evidence_that_gives_back_the_split_numbers_exactly(tmp_path):
    _project(tmp_path)
    write_tiny_generator(tmp_path / _params().train.model_out, ClassTable.load(tmp_path / _params().data.out))
    for ignore in (None, [1]):
        metrics = run_evaluate(make_params(_override(ignore_classes=ignore)), tmp_path)
        ev = Evidence.load(tmp_path / "outputs/evaluate/per_image.npz")
        assert list(ev.ids) == [f"val-{i:03d}" for i in range(6)] and ev.fake_features.shape == (6, 64)
        for metric in ("fid", "kid_mean", "miou", "accuracy"):
            assert metric_value(ev, metric) == metrics[metric], (ignore, metric)
        confusion = np.load(tmp_path / "outputs/evaluate/confusion.npy")
        np.testing.assert_array_equal(ev.inter.sum(0), np.diag(confusion))
        assert ev.meta["val_split_id"] == metrics["val_split_id"] == metrics["comparability"]["eval_split_id"]
        assert ev.meta["segmenter_id"] == metrics["segmenter"]["id"] and ev.meta["ignore"] == metrics["ignore_classes"]


def _register(root: Path, **register) -> dict:
    run_evaluate(_params(**register), root)
    run_register(_params(**register), root)
    return json.loads((root / "outputs/register/registration.json").read_text())


def test_if_significant_reuses_stored_evidence_then_rescores_the_champion_after_the_segmenter_changed(tmp_path):
    import mlflow

    root, uri = _project(tmp_path)
    client = mlflow.MlflowClient(uri)
    first_run = _trained(root, uri, seed=1)
    first = _register(root, metric="miou", greater_is_better=True)
    assert first["promoted"] is True and first["reason"] == "no champion yet" and first["comparison"] is None
    assert [a.path for a in client.list_artifacts(first_run, "evaluation")] == ["evaluation/per_image.npz"]
    champion_miou = json.loads((root / "outputs/evaluate/metrics.json").read_text())["miou"]

    _trained(root, uri, seed=2)
    second = _register(root, metric="miou", greater_is_better=True)
    c = second["comparison"]
    assert c["champion_evidence"] == "its stored evidence" and c["champion_version"] == 1
    assert c["champion"] == champion_miou == second["champion_value_before"] == c["champion_value_recorded"]
    assert c["challenger"] == second["value"] and c["improvement"] == pytest.approx(c["challenger"] - c["champion"])
    assert second["promoted"] == (c["ci_low"] > 0 and c["improvement"] >= 0) == c["promoted"]
    assert c["ci_low"] <= c["improvement"] <= c["ci_high"] and c["replicates"] == 200 and c["images"] == 6
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion_decision"] == second["reason"] and f"interval [{c['ci_low']:.4g}" in second["reason"]
    assert float(tags["promotion_champion_value"]) == c["champion"] and tags["promotion_rule"] == "if_significant"

    # The data grows (a training sample more: another dataset id, the same validation split) and the
    # segmenter is retrained on it (another scorer): the champion is scored again, never refused.
    manifest = pd.read_parquet(root / "data/prepared/manifest.parquet")
    extra = manifest[manifest["split"] == "train"].iloc[:1].assign(id="train-new", source_hash="new")
    pd.concat([manifest, extra]).to_parquet(root / "data/prepared/manifest.parquet", index=False)
    run_train_segmenter(_params(segmenter_steps=3), root)
    champion = client.get_model_version_by_alias(NAME, "champion")
    _trained(root, uri, seed=3)
    third = _register(root, metric="miou", greater_is_better=True)
    c = third["comparison"]
    assert c["champion_version"] == int(champion.version) and c["champion_evidence"].startswith("scored again now")
    assert "segmenter_id" in c["champion_evidence"] and "eval_split_id" not in c["champion_evidence"]
    # the re-scoring is the evaluation's own pass: the champion's generator evaluated today gives the same number
    generator = mlflow.artifacts.download_artifacts(
        run_id=champion.run_id,
        artifact_path="checkpoint/generator.pt",
        dst_path=str(root / "champion"),
        tracking_uri=uri,
    )
    (root / "outputs/train/run.json").unlink()  # scored, logged nowhere
    override = _override()
    override["train"]["model_out"] = generator
    again = run_evaluate(make_params(override), root)
    assert c["champion"] == again["miou"] != c["champion_value_recorded"]


def test_a_champion_without_a_class_the_validation_maps_use_is_not_compared_and_the_reason_names_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = tmp_path / _params().data.out
    write_toy_prepared(data, n_train=8, n_val=4, names=TOY_NAMES[:3])
    run_train_segmenter(_params(), tmp_path)
    _trained(tmp_path, uri, seed=1)
    assert _register(tmp_path)["promoted"] is True

    # a fourth class appended to the table; the validation maps now use it
    write_toy_prepared(data, n_train=8, n_val=4)
    run_train_segmenter(_params(), tmp_path)
    _trained(tmp_path, uri, seed=2)
    refused = _register(tmp_path)
    assert refused["promoted"] is False and refused["comparison"] is None
    assert "cannot be compared on today's validation split" in refused["reason"] and "3 'sand' (" in refused["reason"]
    assert "(it has 3)" in refused["reason"] and "the champion stays" in refused["reason"]

    # validation maps that use only the champion's classes: it is scored with its own 3 classes
    manifest = pd.read_parquet(data / "manifest.parquet")
    for row in manifest[manifest["split"] == "val"].itertuples():
        label = np.array(Image.open(data / row.label))
        Image.fromarray(np.where(label == 3, 0, label).astype(np.uint8)).save(data / row.label)
    manifest.loc[manifest["split"] == "val", "source_hash"] += "-edited"
    manifest.to_parquet(data / "manifest.parquet", index=False)
    compared = _register(tmp_path)
    assert compared["comparison"]["champion_evidence"].startswith("scored again now")
    assert "eval_split_id" in compared["comparison"]["champion_evidence"] and "interval" in compared["reason"]
