"""A griffe extension for the API reference: the docstrings' reStructuredText roles shown as code.

The docstrings of ``gaugan`` and ``pipeline`` are reST-ish prose: ``code`` in double backticks (which
Markdown already shows as code) and Sphinx roles such as :func:`~gaugan.synthesizer.fold_spectral_norm`.
Markdown has no roles, so this turns each role into a code span (``~`` keeps the last name, as
Sphinx does), and a line's closing ``::`` (reST's literal-block marker; the indented block after it
is already code in Markdown) into ``:``, before mkdocstrings renders the docstring. The source files
are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const|ref|doc|term):`([^`]+)`")
LITERAL = re.compile(r"(\S)::$", re.MULTILINE)  # "text::" before an indented block: Sphinx shows "text:"


def _code(match: re.Match[str]) -> str:
    target = match.group(1).strip()
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


class RstRoles(griffe.Extension):
    """Rewrites the roles of every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        _rewrite(obj)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        _rewrite(pkg)  # the package itself is not among the objects on_object sees


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = LITERAL.sub(r"\1:", ROLE.sub(_code, obj.docstring.value))
