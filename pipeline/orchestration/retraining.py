"""What a retraining on new data trains, and what it decided: the plan before the pipeline, the summary after.

``retrain.mode: finetune`` continues the registered champion: the plan sets ``train.init_from`` to
the version the champion alias points at now, pinned (``models:/<model>/<version>``, the alias kept
in the line's comment), and the fine-tune's step count and decay in ``params.yaml``, where DVC and
``git diff`` see them. Pinned, the commit that holds these params names one parent for good: a
later ``dvc repro`` of it trains nothing, whatever the alias has moved to since.
``scratch``, or no champion yet, trains from step 0. The summary reads what the stages wrote: the
parent (:class:`~pipeline.parents.record.ParentRecord`) and the registration's decision (``register.out``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ParamsError
from pipeline.io import atomic_write_text
from pipeline.params import Params, load_params, parse_params
from pipeline.parents.record import ParentRecord, describe_parent
from pipeline.registry.versions import CHAMPION


@dataclass
class RetrainPlan:
    mode: str  # finetune | scratch
    init_from: str | None
    settings: dict[str, object]  # dotted params.yaml key -> value to set
    why: str
    changed: list[str] = field(default_factory=list)  # "key: old -> new" of what applying it changed
    pinned_from: str | None = None  # the alias the pinned parent version was resolved from

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


def champion_version(params: Params, root: Path, name: str) -> int | None:
    """The version ``name``'s champion alias points at in the tracking server's registry (None: no
    champion, or no such model)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import mlflow_errors, resolve_tracking_uri

    uri = resolve_tracking_uri(params.mlflow.tracking_uri, root)
    with mlflow_errors(uri, f"looking up the champion of {name!r}"):
        try:
            model = mlflow.MlflowClient(uri).get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
    version = dict(model.aliases or {}).get(CHAMPION)
    return int(version) if version is not None else None


def plan_retraining(params: Params, root: Path) -> RetrainPlan:
    """finetune from the champion (pinned to its version) when asked and there is one, else from scratch."""
    r = params.retrain
    name = registered_model_name(params, root) if r.mode == "finetune" else None
    version = champion_version(params, root, name) if name is not None else None
    if r.mode == "finetune" and name is not None and version is not None:
        uri, alias = f"models:/{name}/{version}", f"models:/{name}@{CHAMPION}"
        settings = {
            "train.init_from": uri,
            "train.max_steps": r.finetune_steps,
            "train.decay_start_step": r.finetune_decay_start_step,
        }
        why = f"retrain.mode finetune, {r.finetune_steps} steps, the {CHAMPION} pinned"
        return RetrainPlan("finetune", uri, settings, why, pinned_from=alias)
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
                f"{params_path}: {key} is missing; it is needed to retrain (see the project's params.yaml)"
            )
        old = doc[section][name]
        if old != value:
            plan.changed.append(f"{key}: {old} -> {value}")
            doc[section][name] = value
        if key == "train.init_from":
            _note_pin(doc[section], name, plan.pinned_from if value is not None else None)
    buf = StringIO()
    yaml.dump(doc, buf)
    parse_params(_plain(buf.getvalue()), params_path)  # the edited file is valid before it replaces the old one
    atomic_write_text(params_path, buf.getvalue())
    return plan


PIN_NOTE = "pinned from {alias} by a retraining; "


def _note_pin(section, key: str, alias: str | None) -> None:
    """The line's comment starts with where a pinned parent came from (an earlier note replaced)."""
    import re

    comments = section.ca.items.get(key)
    token = comments[2] if comments and len(comments) > 2 else None
    text = token.value if token is not None else ""
    body = re.sub(r"^#\s*pinned from \S+ by a retraining; ", "# ", text.lstrip().rstrip("\n")) or "#"
    if alias is not None:
        body = "# " + PIN_NOTE.format(alias=alias) + body.removeprefix("#").lstrip()
    if token is not None:
        padding = text[: len(text) - len(text.lstrip())]
        token.value = padding + body + ("\n" if text.endswith("\n") else "")
    elif alias is not None:
        section.yaml_add_eol_comment(body, key)


def _plain(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def summary(params_path: Path, root: Path, plan: RetrainPlan | None) -> dict:
    """What the retraining started from and what it decided, from the stages' own records."""
    params = load_params(params_path)
    parent = ParentRecord.read(root / params.train.parent_dir)
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
        "parent": parent.to_json() if parent else {},
        "decision": decided,
        "promoted": registration.get("promoted"),
        "registration": registration,
    }


# ------------------------------------------------------------------------------------------------
# the retraining's result as one git ref

RECIPE_FILES = ("params.yaml",)  # besides `.dvc` files and DVC's .gitignore files: what a retraining may change


def _is_recipe(path: str) -> bool:
    name = Path(path).name
    return path in RECIPE_FILES or name.endswith(".dvc") or name == ".gitignore"


def prepare_commit(root: Path, settings) -> str | None:
    """Before a retraining that commits its result (``retrain.commit``): a git repository, on
    ``retrain.git_branch`` when one is set, with nothing uncommitted but the recipe (params.yaml,
    ``.dvc`` and ``.gitignore`` files) and what the pipeline writes. Returns the git remote to push
    to (the branch's upstream, else origin; None when there is none)."""
    from pipeline.versioning.gitstate import GitError, current_branch, git_state, is_git_repo, push_remote

    if not is_git_repo(root):
        raise GitError(
            f"retrain.commit is true but {root} is not a git repository: `git init` and commit the project, "
            "or set retrain.commit: false in params.yaml"
        )
    branch = current_branch(root)
    if settings.git_branch and branch != settings.git_branch:
        raise GitError(
            f"retrain.git_branch is {settings.git_branch!r} but {branch or 'a detached HEAD'} is checked out in "
            f"{root}: `git switch {settings.git_branch}` (or set retrain.git_branch: null)"
        )
    unrelated = [p for p in git_state(root).dirty_paths if not _is_recipe(p)]
    if unrelated:
        shown = ", ".join(unrelated[:5]) + (f" and {len(unrelated) - 5} more" if len(unrelated) > 5 else "")
        raise GitError(
            f"uncommitted changes in {root}: {shown}; a retraining commits everything that made its model, so "
            "commit or stash them first (or set retrain.commit: false)"
        )
    return push_remote(root, branch)


def commit_retraining(root: Path, result: dict, plan: RetrainPlan | None, registered: bool = True) -> dict:
    """One commit of what made the model (params.yaml, dvc.lock, ``.dvc`` and ``.gitignore`` files,
    the stages' uncached outputs), tagged ``model/<name>/<version>`` when this retraining
    ``registered`` that version; -> {commit, tag, branch, pushed: None} (:func:`push_ref` pushes it)."""
    from pipeline.versioning.gitstate import (
        changed_paths,
        current_branch,
        git,
        head,
        identity_args,
        is_pipeline_written,
        pipeline_written,
    )

    written = pipeline_written(root)
    paths = [p for p in changed_paths(root) if _is_recipe(p) or is_pipeline_written(p, written)]
    ident = identity_args(root)
    registration = result.get("registration") or {}
    name, version = (registration.get("name"), registration.get("version")) if registered else (None, None)
    if paths:
        git(root, "add", "-A", "--", *paths)
        what = f"{name} version {version}" if version is not None else "no registration"
        message = f"retrain: {what}\n\nstarted from {result.get('started_from')}\n{result.get('decision')}\n"
        if plan is not None and plan.changed:
            message += "params.yaml: " + "; ".join(plan.changed) + "\n"
        git(root, *ident, "commit", "-q", "--no-verify", "-m", message)
    commit = head(root)
    assert commit is not None  # a commit was just made, or HEAD already held everything
    tag = f"model/{name}/{version}" if name and version is not None else None
    if tag:
        git(root, *ident, "tag", "-f", "-a", tag, "-m", f"{name} version {version}: {result.get('decision')}", commit)
    return {"commit": commit, "tag": tag, "branch": current_branch(root), "pushed": None}


def push_ref(root: Path, ref: dict, remote: str) -> None:
    """The retraining's branch and tag to the git remote; a refusal leaves them local (the version's
    tags already name the commit) and says how to push them."""
    from pipeline.versioning.gitstate import GitError, git

    refs = ([f"HEAD:refs/heads/{ref['branch']}"] if ref["branch"] else []) + (
        [f"refs/tags/{ref['tag']}"] if ref["tag"] else []
    )
    try:
        git(root, "push", "-q", remote, *refs, timeout=600)
    except GitError as err:
        raise GitError(
            f"the commit {ref['commit'][:12]} ({ref['tag'] or 'untagged'}) is made and the registry names it, but "
            f"the git remote {remote!r} did not take it ({err}); push it yourself: git push {remote} {' '.join(refs)}"
        ) from err
    ref["pushed"] = remote


def record_ref(root: Path, result: dict, ref: dict, plan: RetrainPlan | None) -> None:
    """The registered version and its run get ``git_ref`` (the commit that reproduces it), ``git_tag``
    and, for a pinned parent, ``parent_pinned_from`` (the alias it was resolved from)."""
    import mlflow

    from pipeline.tracking import mlflow_errors

    registration = result.get("registration") or {}
    if not registration.get("name") or registration.get("version") is None:
        return
    tags = {"git_ref": ref["commit"], "git_tag": ref.get("tag") or ""}
    if plan is not None and plan.pinned_from:
        tags["parent_pinned_from"] = plan.pinned_from
    uri = registration["tracking_uri"]
    client = mlflow.MlflowClient(uri)
    with mlflow_errors(uri, f"tagging {registration['model_uri']} with its git ref"):
        for key, value in tags.items():
            if value:
                client.set_model_version_tag(registration["name"], str(registration["version"]), key, value)
                client.set_tag(registration["run_id"], key, value)
