"""Shared test configuration: markers follow the folder a test lives in."""

from __future__ import annotations

import pathlib
import sys

import hypothesis  # noqa: F401
import pytest

# Imported here, at start-up, so that pytest's assertion rewriting parses hypothesis before any
# test has started threads: otherwise the hypothesis plugin imports it at the terminal summary,
# where CPython 3.11's ast.parse can fail spuriously ("AST constructor recursion depth
# mismatch", python/cpython#106905) after a run that passed.

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = pathlib.Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _no_program_cache_leaks():
    """An in-process CLI call turns the fit's program cache on for the whole process (as a
    composition root does): turn it off again so that other tests trace their own programs."""
    yield
    fit = sys.modules.get("mixture.fit")
    if fit is not None and fit._program_cache is not None:
        fit.use_program_cache(None)
