"""Promotion on evidence (``register.promote: if_significant``): the challenger against the champion
on the same validation images, with the same FID backbone and segmenter, by a paired bootstrap.

The challenger's evidence is this run's ``per_image.npz`` (``pipeline/evaluation/evidence.py``).
The champion's is the ``evaluation/per_image.npz`` logged with its version when that was made on
today's terms: the same validation split (``eval_split_id``), FID backbone (name, weights and where
it ran) and segmenter (``segmenter_id``). Otherwise (another split, a segmenter retrained on grown
data, a version registered before evidence was kept) the champion's generator is downloaded from
the registry and scored again, now, by the evaluation's own pass (``score_split``) on today's split
with today's backbone, segmenter and ``evaluate`` settings. A champion trained before classes were
appended is scored the same way when the validation maps use only its classes; when one uses a
class it lacks, nothing is compared and the champion stays, and the reason names the class.

The decision: promote when the ``register.confidence`` interval of the improvement (challenger minus
champion, the sign making better positive) lies above zero and the improvement is at least
``register.min_improvement``. Both values, the interval and the sentence go to registration.json
(``comparison``), the version's ``promotion_*`` tags and the log.

The slow part (download, re-scoring, bootstrap) runs for the champion of the moment before the
registration waits for its turn (:meth:`EvidenceJudge.prepare`); inside the turn only a champion
that changed meanwhile costs anything.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from gaugan.checkpoint import load_generator
from pipeline.distributed import pick_device
from pipeline.errors import EvaluationError
from pipeline.evaluation.evidence import EVIDENCE_FILE, Evidence, paired_bootstrap
from pipeline.evaluation.inputs import EvaluationInputs, classes_beyond, full_float32, load_inputs
from pipeline.evaluation.report import evidence
from pipeline.evaluation.scoring import real_feature_cache, score_split
from pipeline.params import Params
from pipeline.registry.versions import CHAMPION, Decision
from pipeline.tracking import RunRef, mlflow_errors, resume_run

log = logging.getLogger(__name__)

EVIDENCE_ARTIFACT = f"evaluation/{EVIDENCE_FILE}"  # where a version's evidence lives in its run
# What today's evaluation and the champion's stored one must share for the stored one to be used.
_SAME_TERMS = ("val_split_id", "backbone_key", "segmenter_id", "resolution", "style_source")


def log_evidence(ref: RunRef, path: Path) -> None:
    """The challenger's per-image evidence into its run, where a later registration finds it."""
    import mlflow

    with resume_run(ref):
        mlflow.log_artifact(str(path), artifact_path=EVIDENCE_ARTIFACT.rsplit("/", 1)[0])


class EvidenceJudge:
    """``judge(champion) -> Decision`` for :func:`~pipeline.registry.versions.register_version` (cached per version)."""

    def __init__(self, params: Params, root: Path, evidence_path: Path, tags: dict[str, str], tracking_uri: str):
        self.params, self.root, self.tags, self.uri = params, Path(root), tags, tracking_uri
        self.settings = params.registry
        self.challenger = Evidence.load(evidence_path)
        made_from = self.challenger.meta.get("generator_sha256")
        if made_from != tags.get("generator_sha256"):
            raise EvaluationError(
                f"{evidence_path} was made from the generator with sha256 {made_from}, not from the one being "
                f"registered ({tags.get('generator_sha256')}); run the evaluate stage again"
            )
        self.device = pick_device(params.evaluate.device, key="evaluate.device")
        self._decided: dict[str, Decision] = {}

    def prepare(self, name: str) -> None:
        """Decide against the current champion now, before the registration's turn."""
        import mlflow
        from mlflow.exceptions import MlflowException

        client = mlflow.MlflowClient(self.uri)
        with mlflow_errors(self.uri, f"reading the champion of {name!r}"):
            try:
                aliases = dict(client.get_registered_model(name).aliases or {})
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                return  # the first version of this model: no champion to compare with
            champion = client.get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None
        self(champion)

    def __call__(self, champion) -> Decision:
        if champion is None:
            return Decision(True, None, "no champion yet")
        if str(champion.version) not in self._decided:
            self._decided[str(champion.version)] = self._decide(champion)
        return self._decided[str(champion.version)]

    def _decide(self, champion) -> Decision:
        s, label = self.settings, f"the champion (version {champion.version})"
        raw = champion.tags.get(f"metric.{s.metric}")
        recorded = float(raw) if raw is not None else None
        theirs, how = self._champion_evidence(champion, label)
        if isinstance(theirs, str):  # nothing can be compared: the champion stays
            return Decision(False, recorded, f"{theirs}; the champion stays (register.promote: always moves it)")
        mine = self.challenger.meta
        differs = [
            f"{k} is {mine.get(k)!r} here and {theirs.meta.get(k)!r} for {label}"
            for k in ("resolution", "style_source")
            if mine.get(k) != theirs.meta.get(k)
        ]
        if differs:
            return Decision(
                False,
                recorded,
                f"{s.metric} not comparable with {label}'s: {'; '.join(differs)}. "
                "The champion stays (register.promote: always moves it)",
            )
        result = paired_bootstrap(
            self.challenger,
            theirs,
            s.metric,
            s.greater_is_better,
            s.bootstrap,
            s.confidence,
            self.params.seed,
            self.device,
        )
        return verdict(result, s, champion.version, how, recorded)

    def _champion_evidence(self, champion, label: str) -> tuple[Evidence | str, str]:
        """(the champion's evidence on today's terms, or why there is none; how it was obtained)."""
        mine = self.challenger.meta
        scorer = {
            "eval_split_id": mine["val_split_id"],
            "fid_backbone": mine["fid_backbone"],
            "segmenter_id": mine["segmenter_id"],
        }
        changed = [
            f"{k} {champion.tags.get(k) or 'unrecorded'} -> {v}" for k, v in scorer.items() if champion.tags.get(k) != v
        ]
        if not changed:
            stored = self._stored(champion)
            if isinstance(stored, Evidence):
                return stored, "its stored evidence"
            changed = [stored]
        log.info("register: scoring %s again on today's terms (%s)", label, "; ".join(changed))
        return self._rescore(champion, label), f"scored again now ({'; '.join(changed)})"

    def _stored(self, champion) -> Evidence | str:
        """The champion's logged evidence if it was made on exactly today's terms, else why not."""
        with tempfile.TemporaryDirectory(prefix="gaugan-evidence-") as tmp:
            path = download(self.uri, tmp, run_id=champion.run_id, artifact_path=EVIDENCE_ARTIFACT)
            if path is None:
                return f"no {EVIDENCE_ARTIFACT} in its run {champion.run_id}"
            stored = Evidence.load(path)
        mine = self.challenger
        for key in _SAME_TERMS:
            if stored.meta.get(key) != mine.meta.get(key):
                return f"its stored evidence has {key} {stored.meta.get(key)!r}, today's {mine.meta.get(key)!r}"
        if list(stored.ids) != list(mine.ids) or not np.array_equal(stored.real_features, mine.real_features):
            return "its stored evidence has other images or real-image features than today's"
        return stored

    def _rescore(self, champion, label: str) -> Evidence | str:
        with tempfile.TemporaryDirectory(prefix="gaugan-champion-") as tmp:
            generator = champion_generator(self.uri, champion, Path(tmp))
            if generator is None:
                return f"{label} cannot be scored again: its registered model holds no generator file"
            inputs_or_reason = self._inputs(generator, label)
            if isinstance(inputs_or_reason, str):
                return inputs_or_reason
            e = self.params.evaluate
            with full_float32():
                scores = score_split(
                    inputs_or_reason,
                    e,
                    self.params.seed,
                    real_feature_cache(inputs_or_reason, e, self.root),
                    bounds=False,
                )
            return evidence(inputs_or_reason, scores, e, self.params.seed)

    def _inputs(self, generator: Path, label: str) -> EvaluationInputs | str:
        """Today's evaluation inputs with the champion's generator, or why its classes cannot be scored."""
        own = load_generator(generator, "cpu").classes
        data_root = self.root / self.params.data.out
        if own is not None:
            beyond = classes_beyond(data_root, own.label_nc, len(self.challenger))
            if beyond:
                names = self.challenger.meta.get("class_names", [])
                listed = ", ".join(
                    f"{c} {names[c] if c < len(names) else ''!r} ({k} images)" for c, k in beyond.items()
                )
                return (
                    f"{label} cannot be compared on today's validation split: its maps use classes it was not "
                    f"trained with (it has {own.label_nc}): {listed}"
                )
        return load_inputs(self.params, self.root, generator=generator)


def verdict(result: dict, settings, version, how: str, recorded: float | None) -> Decision:
    """Promote when the interval lies above zero and the improvement reaches register.min_improvement."""
    significant = result["ci_low"] > 0
    enough = result["improvement"] >= settings.min_improvement
    promoted = significant and enough
    pct, least = f"{result['confidence'] * 100:g}%", f"register.min_improvement {settings.min_improvement:g}"
    if promoted:
        why = f"the interval lies above zero and the improvement reaches {least}"
    elif not significant:
        why = "the interval does not lie above zero"
    else:
        why = f"the improvement is below {least}"
    direction = "higher" if settings.greater_is_better else "lower"
    reason = (
        f"{settings.metric} {result['challenger']:.6g} against the champion's {result['champion']:.6g} (version "
        f"{version}, {how}): improvement {result['improvement']:.4g} ({direction} is better), "
        f"{pct} interval [{result['ci_low']:.4g}, {result['ci_high']:.4g}] over {result['replicates']} "
        f"paired resamples of {result['images']} validation images; {'promoted' if promoted else 'not promoted'}: {why}"
    )
    record = {
        **result,
        "min_improvement": settings.min_improvement,
        "significant": significant,
        "champion_version": int(version),
        "champion_evidence": how,
        "champion_value_recorded": recorded,
        "promoted": promoted,
        "decision": reason,
    }
    tags = {
        "promotion_rule": settings.promote,
        "promotion_value": repr(result["challenger"]),
        "promotion_champion_value": repr(result["champion"]),
        "promotion_champion_version": str(version),
        "promotion_improvement": repr(result["improvement"]),
        "promotion_interval": f"[{result['ci_low']!r}, {result['ci_high']!r}]",
        "promotion_confidence": repr(result["confidence"]),
        "promotion_decision": reason[:4900],
    }
    return Decision(promoted, result["champion"], reason, record, tags)


def champion_generator(tracking_uri: str, champion, into: Path) -> Path | None:
    """The champion's generator file, from its registered model (the pyfunc's ``generator`` artifact)."""
    model_dir = download(tracking_uri, str(into), artifact_uri=champion.source)
    files = sorted((model_dir / "artifacts").glob("*")) if model_dir is not None else []
    return files[0] if len(files) == 1 else None


def download(tracking_uri: str, into: str, **where) -> Path | None:
    """An MLflow artifact (``run_id`` + ``artifact_path``, or ``artifact_uri``) into ``into``; None if absent."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(**where, dst_path=into, tracking_uri=tracking_uri))
    except (MlflowException, OSError) as err:
        log.info("register: no artifact %s: %s", where, err)
        return None
