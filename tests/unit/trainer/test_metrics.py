"""Trainer metrics: what the alerts (deploy/prometheus/rules/gmm-alerts.yml) rely on."""

from __future__ import annotations

import re

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from trainer.metrics import REJECTION_REASONS, TrainerMetrics


def _calls(text: str, opening: str) -> list[str]:
    """The argument text of every `opening...)` call, parentheses balanced."""
    calls = []
    for match in re.finditer(re.escape(opening), text):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        calls.append(text[match.end() : i - 1])
    return calls


def _last_argument(arguments: str) -> str | None:
    """A reason code given as the last argument (a bare word literal), if any."""
    found = re.search(r',\s*"(\w+)"\s*,?\s*$', arguments)
    return found.group(1) if found else None


def test_every_rejection_reason_in_the_code_is_pre_initialised():
    """A reason missing here would be born at 1, and its first rejection not counted."""
    said: set[str | None] = set()
    for name in ("mixture/guards.py", "trainer/cycle.py"):
        said |= set(re.findall(r'Rejection\(\s*"(\w+)"', (ROOT / name).read_text()))
    for path in sorted((ROOT / "mixture").glob("*.py")):
        said |= {_last_argument(call) for call in _calls(path.read_text(), "DataError(")}
    said |= set(re.findall(r'reason: str = "(\w+)"', (ROOT / "mixture/fit_data.py").read_text()))
    said.discard(None)
    assert len(said) >= 8
    assert said <= set(REJECTION_REASONS), said - set(REJECTION_REASONS)


def test_the_model_name_and_rejection_series_are_exported_from_the_start():
    m = TrainerMetrics(model="fraud")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in family.samples
    }
    assert samples[("gmm_model_info", (("model", "fraud"),))] == 1
    for reason in REJECTION_REASONS:
        assert samples[("gmm_trainer_rejected_fits_total", (("reason", reason),))] == 0
