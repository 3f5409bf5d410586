"""What a retraining on new data trains, and what it decided: the plan before the pipeline, the summary after.

``retrain.mode: finetune`` continues the registered champion: the plan sets ``train.init_from`` to
``models:/<model>@champion`` (the ``resolve-parent`` stage turns the alias into one version, once)
and the fine-tune's step count and decay in ``params.yaml``, where DVC and ``git diff`` see them.
``scratch``, or no champion yet, trains from step 0. The summary reads what the stages wrote: the
parent (``<train.parent_dir>/parent.json``) and the registration's decision (``register.out``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ParamsError
from pipeline.io import atomic_write_text
from pipeline.params import Params, load_params, parse_params
from pipeline.registry import CHAMPION


@dataclass
class RetrainPlan:
    mode: str  # finetune | scratch
    init_from: str | None
    settings: dict[str, object]  # dotted params.yaml key -> value to set
    why: str
    changed: list[str] = field(default_factory=list)  # "key: old -> new" of what applying it changed

    def describe(self) -> str:
        what = f"fine-tuning {self.init_from}" if self.init_from else "training from step 0"
        return f"{what} ({self.why})"


def registered_model_name(params: Params, root: Path) -> str | None:
    """``register.model_name``, else ``gaugan-<dataset>`` from the prepared (or the source's) class table."""
    if params.registry.model_name:
        return params.registry.model_name
    for classes in (root / params.data.out / "classes.json", root / params.data.source / "classes.json"):
        if classes.is_file():
            dataset = json.loads(classes.read_text()).get("dataset")
            if dataset:
                return f"gaugan-{dataset}"
    return None


def champion_exists(params: Params, root: Path, name: str) -> bool:
    """Does ``name`` have a champion in the tracking server's registry? (A missing model: no.)"""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import mlflow_errors, resolve_tracking_uri

    uri = resolve_tracking_uri(params.mlflow.tracking_uri, root)
    with mlflow_errors(uri, f"looking up the champion of {name!r}"):
        try:
            model = mlflow.MlflowClient(uri).get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
    return CHAMPION in dict(model.aliases or {})


def plan_retraining(params: Params, root: Path) -> RetrainPlan:
    """finetune from the champion when asked and there is one, else from scratch."""
    r = params.retrain
    name = registered_model_name(params, root) if r.mode == "finetune" else None
    if r.mode == "finetune" and name is not None and champion_exists(params, root, name):
        uri = f"models:/{name}@{CHAMPION}"
        settings = {
            "train.init_from": uri,
            "train.max_steps": r.finetune_steps,
            "train.decay_start_step": r.finetune_decay_start_step,
        }
        return RetrainPlan("finetune", uri, settings, f"retrain.mode finetune, {r.finetune_steps} steps")
    why = "retrain.mode is scratch" if r.mode == "scratch" else f"no champion of {name or 'the model'} yet"
    settings = {
        "train.init_from": None,
        "train.max_steps": r.scratch_steps,
        "train.decay_start_step": r.scratch_decay_start_step,
    }
    return RetrainPlan("scratch", None, settings, f"{why}, {r.scratch_steps} steps")


def apply_plan(params_path: Path, plan: RetrainPlan) -> RetrainPlan:
    """Write the plan's settings into ``params_path`` (comments and layout kept; checked, then replaced
    atomically); records in ``plan.changed`` what moved."""
    from io import StringIO

    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: the file's comments and key order stay
    yaml.width = 4096
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load(params_path.read_text())
    for key, value in plan.settings.items():
        section, name = key.split(".")
        if section not in doc or name not in doc[section]:
            raise ParamsError(
                f"{params_path}: {key} is missing; it is needed to retrain (see the README's params.yaml)"
            )
        old = doc[section][name]
        if old != value:
            plan.changed.append(f"{key}: {old} -> {value}")
            doc[section][name] = value
    buf = StringIO()
    yaml.dump(doc, buf)
    parse_params(_plain(buf.getvalue()), params_path)  # the edited file is valid before it replaces the old one
    atomic_write_text(params_path, buf.getvalue())
    return plan


def _plain(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def summary(params_path: Path, root: Path, plan: RetrainPlan | None) -> dict:
    """What the retraining started from and what it decided, from the stages' own records."""
    params = load_params(params_path)
    parent_file = root / params.train.parent_dir / "parent.json"
    parent = json.loads(parent_file.read_text()) if parent_file.is_file() else {}
    reg_file = root / params.registry.out
    registration = json.loads(reg_file.read_text()) if reg_file.is_file() else {}
    started = describe_parent(parent)
    if registration:
        verdict = "promoted to champion" if registration.get("promoted") else "not promoted"
        version, name = registration.get("version"), registration.get("name")
        decided = f"version {version} of {name}: {verdict}; {registration.get('reason')}"
    else:
        decided = "nothing was registered"
    return {
        "mode": plan.mode if plan else None,
        "params_changed": plan.changed if plan else [],
        "started_from": started,
        "parent": parent,
        "decision": decided,
        "promoted": registration.get("promoted"),
        "registration": registration,
    }


def describe_parent(parent: dict) -> str:
    """One line on the parent of the trained model (``<train.parent_dir>/parent.json``)."""
    kind = parent.get("kind")
    if not parent or kind in (None, "none"):
        return "step 0 (no parent model)"
    if kind == "registry":
        return (
            f"{parent.get('init_from')} = version {parent.get('version')} of {parent.get('name')} "
            f"(run {parent.get('run_id')}, dataset {parent.get('dataset_id')})"
        )
    return f"{kind} {parent.get('init_from')}"
