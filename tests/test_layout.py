"""The project's structure holds: dvc.yaml declares exactly the code and settings each stage uses,
params.yaml holds exactly the settings the code reads, no import cycles, no overlong functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, make_params

from pipeline.errors import UndeclaredParamError
from pipeline.params import Params, scoped

PACKAGES = ("gaugan", "pipeline")
STAGES = {  # dvc.yaml stage -> module
    "ingest": "pipeline.stages.ingest",
    "resolve-parent": "pipeline.stages.resolve_parent",
    "train": "pipeline.stages.train",
    "train-segmenter": "pipeline.stages.train_segmenter",
    "evaluate": "pipeline.stages.evaluate",
    "register": "pipeline.stages.register",
}
MAX_FUNCTION_LINES = 60


# ------------------------------------------------------------------------------------------------
# imports, read from the source (lazy imports inside functions included)


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    path = REPO_ROOT.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(path: Path) -> set[Path]:
    """The files of gaugan/ and pipeline/ that ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {f for f in map(_module_file, names) if f is not None}
    return found - {path}


def _closure(start: Path) -> set[Path]:
    """Every file a module runs: its imports, theirs, and the packages (``__init__.py``) they live in."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(REPO_ROOT)
        parents = [REPO_ROOT.joinpath(*rel.parts[:i], "__init__.py") for i in range(1, len(rel.parts))]
        todo += [p for p in parents if p.is_file()] + sorted(_imports(path))
    return seen


def _dvc_stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if d.split("/")[0] in PACKAGES]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_deps_are_exactly_the_stage_modules_import_closure(name):
    stage = _dvc_stages()[name]
    module = _module_file(STAGES[name])
    closure = {p.relative_to(REPO_ROOT).as_posix() for p in _closure(module)}
    deps = _code_deps(stage)
    assert deps[0] == module.relative_to(REPO_ROOT).as_posix(), "the stage module comes first: one hop from dvc.yaml"

    def covered(file: str) -> bool:
        return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)

    missing = sorted(f for f in closure if not covered(f))
    assert not missing, f"{name}: dvc.yaml does not list code the stage runs: {missing}"
    for dep in deps:
        path = REPO_ROOT / dep
        files = {p.relative_to(REPO_ROOT).as_posix() for p in (path.rglob("*.py") if path.is_dir() else [path])}
        assert files, f"{name}: dvc.yaml lists {dep}, which does not exist"
        unused = sorted(files - closure)
        assert not unused, f"{name}: dvc.yaml lists {dep}, but the stage never imports {unused}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_params_are_exactly_what_the_stage_reads(name):
    import importlib

    module = importlib.import_module(STAGES[name])
    assert sorted(_dvc_stages()[name]["params"]) == sorted(module.PARAMS)


def test_a_stage_cannot_read_a_setting_dvc_yaml_does_not_list():
    view = scoped(make_params(), ("seed", "train.crop_size", "register"), "demo")
    assert view.seed == 0 and view.train.crop_size == 64 and view.registry.metric == "fid"
    with pytest.raises(UndeclaredParamError, match=r"the demo stage read train.lr, which its dvc.yaml entry"):
        _ = view.train.lr
    with pytest.raises(UndeclaredParamError, match=r"read evaluate\b"):
        _ = view.evaluate


def test_no_import_cycles_inside_pipeline():
    files = sorted((REPO_ROOT / "pipeline").rglob("*.py"))
    graph = {f: {g for g in _imports(f) if "pipeline" in g.relative_to(REPO_ROOT).parts[:1]} for f in files}
    state: dict[Path, str] = {}

    def visit(node: Path, path: list[Path]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = [p.relative_to(REPO_ROOT).as_posix() for p in path[path.index(nxt) :] + [nxt]]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for f in files:
        if f not in state:
            visit(f, [f])


# ------------------------------------------------------------------------------------------------
# params.yaml


def _fields(model) -> dict:
    """The settings models as nested key sets, with params.yaml's names (aliases)."""
    from pydantic import BaseModel

    out = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        annotation = info.annotation
        out[key] = _fields(annotation) if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return out


def _keys(raw: dict) -> dict:
    return {k: (_keys(v) if isinstance(v, dict) else None) for k, v in raw.items()}


def test_params_yaml_holds_exactly_the_settings_the_code_reads():
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())

    def compare(expected: dict, found: dict, prefix: str) -> list[str]:
        problems = [f"{prefix}{k}: read by the code, missing in params.yaml" for k in expected.keys() - found.keys()]
        problems += [f"{prefix}{k}: in params.yaml, read by no settings model" for k in found.keys() - expected.keys()]
        for k in expected.keys() & found.keys():
            if isinstance(expected[k], dict) != isinstance(found[k], dict):
                problems.append(f"{prefix}{k}: a section in one, a value in the other")
            elif isinstance(expected[k], dict):
                problems += compare(expected[k], found[k], f"{prefix}{k}.")
        return problems

    assert compare(_fields(Params), _keys(raw), "") == []


def test_every_setting_in_params_yaml_has_a_comment():
    lines = (REPO_ROOT / "params.yaml").read_text().splitlines()
    uncommented = [
        line.strip()
        for line in lines
        if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":") and "#" not in line
    ]
    assert uncommented == []


# ------------------------------------------------------------------------------------------------
# size


def test_no_function_in_the_packages_is_over_60_lines():
    long = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


@pytest.mark.parametrize("name", ["ade20k", "coco-stuff", "cityscapes"])
def test_reference_recipes_are_complete_params_files_matching_the_reference_setting(name):
    """configs/<dataset>.yaml: every key of params.yaml, valid, and the reference's architecture."""
    import dataclasses

    from gaugan.config import reference_setting
    from pipeline.params import load_params

    path = REPO_ROOT / "configs" / f"{name}.yaml"
    assert _keys(yaml.safe_load(path.read_text())) == _keys(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    params = load_params(path)
    ref = reference_setting(name)
    m, t = params.model, params.train
    ours = {
        "ngf": m.ngf,
        "ndf": m.ndf,
        "use_instance": m.use_instance,
        "num_upsampling_layers": m.num_upsampling_layers,
        "norm_G": m.norm_G,
        "n_layers_D": m.n_layers_D,
        "crop_size": t.crop_size,
        "aspect_ratio": t.aspect_ratio,
    }
    assert ours == {k: v for k, v in dataclasses.asdict(ref).items() if k in ours}
    assert (t.gan_mode, t.lambda_vgg, t.lambda_feat, t.ttur, t.init_type, t.ema) == (
        "hinge",
        10.0,
        10.0,
        True,
        "xavier",
        False,
    )
    assert (t.d_fake, t.kl_reduction, params.data.classes) == ("regenerate", "sum", name)


# Where gaugan.trainer.TrainOptions may differ from params.yaml's train settings of the same name, and why.
LIBRARY_DEFAULTS_APART = {
    "lambda_vgg": "the library keeps the paper's 10; params.yaml has 0 because the VGG19 weights are not shipped",
    "precision": "params.yaml's auto is resolved per device by the pipeline (pipeline.training.settings)",
    "channels_last": "params.yaml's auto is resolved per device by the pipeline",
    "decay_start_step": "a schedule needs the run's length: the library's default is a constant rate",
}


def test_the_library_defaults_are_params_yaml_defaults():
    """Someone using gaugan as a library gets the settings the pipeline measured best (EMA 0.995 with warm-up)."""
    import dataclasses

    from gaugan.trainer import TrainOptions

    train = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]
    options = TrainOptions()
    shared = [f.name for f in dataclasses.fields(options) if f.name in train]
    differ = {name for name in shared if getattr(options, name) != train[name]}
    assert len(shared) > 15 and {"ema_decay", "ema_warmup", "lr", "d_fake", "kl_reduction"} <= set(shared)
    assert differ == set(LIBRARY_DEFAULTS_APART)
