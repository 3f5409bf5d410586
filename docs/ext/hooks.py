"""MkDocs hooks: the project layout's module tables and the API reference's root modules, made
from the source tree at every build, so they follow the code as it moves.

Markers, each alone on a line of a page:

- ``<!-- module-table: PKG -->``: a table of PKG's modules and subpackages, each with the first
  paragraph of its docstring;
- ``<!-- subpackage-sections: PKG -->``: for each subpackage of PKG, a heading, its concern (the
  first paragraph of its ``__init__.py`` docstring) and the table of its modules;
- ``<!-- api-root-modules: PKG -->``: mkdocstrings' ``:::`` for PKG itself and each module at its
  root (its subpackages have pages of their own).

The files are parsed, never imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- (module-table|subpackage-sections|api-root-modules): ([\w.]+) -->$", re.MULTILINE)
ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):`~?([^`]+)`")


def _folder(package: str) -> Path:
    return ROOT.joinpath(*package.split("."))


def _is_package(path: Path) -> bool:
    return path.is_dir() and (path / "__init__.py").is_file()


def _children(package: str) -> tuple[list[str], list[str]]:
    """The modules (``__init__`` and private ones left out) and the subpackages of a package, sorted."""
    folder = _folder(package)
    modules = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    subpackages = sorted(p.name for p in folder.iterdir() if _is_package(p) and not p.name.startswith("_"))
    return modules, subpackages


def _summary(path: Path) -> str:
    """The first paragraph of a file's docstring, as one line of Markdown fit for a table cell."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        return ""
    text = " ".join(doc.split("\n\n")[0].split())
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text).replace("``", "`")
    parts = text.split("`")  # even parts are prose, odd parts code
    for i in range(0, len(parts), 2):  # in tables, a pipe inside a code span is no cell border
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "`".join(parts).rstrip(":")


def _module_table(package: str) -> str:
    folder = _folder(package)
    modules, subpackages = _children(package)
    rows = [f"| `{package}.{m}` | {_summary(folder / f'{m}.py')} |" for m in modules]
    rows += [f"| `{package}.{s}` (package) | {_summary(folder / s / '__init__.py')} |" for s in subpackages]
    return "\n".join(["| module | what it is |", "|---|---|", *rows])


def _subpackage_sections(package: str) -> str:
    sections = []
    for sub in _children(package)[1]:
        name = f"{package}.{sub}"
        concern = _summary(_folder(name) / "__init__.py")
        sections.append(f"### `{name}`\n\n{concern}\n\n{_module_table(name)}")
    return "\n\n".join(sections)


def _api_root_modules(package: str) -> str:
    blocks = [f"::: {package}\n    options:\n      show_submodules: false"]
    blocks += [f"::: {package}.{m}" for m in _children(package)[0]]
    return "\n\n".join(blocks)


EXPAND = {
    "module-table": _module_table,
    "subpackage-sections": _subpackage_sections,
    "api-root-modules": _api_root_modules,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda m: EXPAND[m.group(1)](m.group(2)), markdown)
