"""params.yaml under generated edits (Hypothesis): a value of any type in any setting, a removed setting
or section, an unknown key, a file that is not YAML. Each is accepted, or refused with the ParamsError
that names the key; never another exception (a traceback for a user's typo).

The budget is the profile's (tests/conftest.py): ``ci`` (the default: a fixed seed, 250 cases each) or
``fuzz`` (``make fuzz``: 5000 cases each, a new seed every run)."""

from __future__ import annotations

import copy
import string

import pytest
import yaml
from conftest import REPO_ROOT
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ParamsError
from pipeline.params import parse_params, read_params_file

RAW = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _paths(raw: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in raw.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


def _at(raw: dict, path: tuple):
    for key in path:
        raw = raw[key]
    return raw


PATHS = _paths(RAW)
SECTIONS = [()] + [p for p in PATHS if isinstance(_at(RAW, p), dict)]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(string.ascii_lowercase, max_size=4), st.integers(), max_size=2),
)
EDITS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), VALUES),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(SECTIONS), st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)),
)


def _apply(raw: dict, edit: tuple) -> str:
    """The edit applied in place; -> the dotted key it touched (as params.yaml and the errors spell it)."""
    kind, path, value = edit
    *parents, leaf = path if path else ("",)
    target = raw
    for key in parents if kind != "add" else path:
        if not isinstance(target.get(key), dict):
            return ".".join(path)  # an earlier edit replaced or removed the section
        target = target[key]
    if kind == "set":
        target[leaf] = value
    elif kind == "delete":
        target.pop(leaf, None)
    else:
        target[value] = 1
        return ".".join((*path, value))
    return ".".join(path)


@given(st.lists(EDITS, min_size=1, max_size=3))
def test_generated_edits_are_accepted_or_refused_naming_the_key(edits):
    raw = copy.deepcopy(RAW)
    touched = [_apply(raw, edit) for edit in edits]
    try:
        parse_params(raw, "params.yaml")
    except ParamsError as err:
        message = str(err)
        assert message.startswith("params.yaml: invalid parameters"), message
        named = [line.split(":")[0].strip(" -") for line in message.splitlines()[1:]]
        assert named, message
        # each refused key is one that was edited, or lies under / above one (a removed section's keys)
        for key in named:
            assert any(key == t or key.startswith(t + ".") or t.startswith(key + ".") for t in touched), (key, touched)


@given(st.text(max_size=200))
def test_a_params_file_of_any_text_is_read_or_refused_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(text)
    try:
        parse_params(read_params_file(path), path)
    except ParamsError as err:
        assert str(err).startswith(f"{path}: "), str(err)


def test_the_project_params_yaml_is_valid():
    assert parse_params(copy.deepcopy(RAW)).seed == RAW["seed"]


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "seed: [\n", "data: 3\n"])
def test_known_bad_files_name_the_problem(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=str(path)):
        parse_params(read_params_file(path), path)
