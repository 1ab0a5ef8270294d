"""bench.startup's table: medians, worst rounds and ratios to `import jax` of the same round."""

from __future__ import annotations

import pytest

from bench import startup

pytestmark = pytest.mark.unit


def test_ratios_are_taken_round_by_round_against_import_jax():
    times = {
        "jax": [1.0, 2.0, 1.0],
        "worker": [2.0, 3.0, 4.0],
        "trainer": [3.0, 6.0, 3.0],
        "trainer CLI": [1.5, 2.0, 1.5],
        "worker to /ready": [5.0, 6.0, 9.0],
    }
    payload, md = startup.report(times)
    worker = payload["results"]["worker"]
    assert worker["median"] == 3.0 and worker["worst"] == 4.0
    assert worker["vs_jax_median"] == 2.0  # rounds: 2.0, 1.5, 4.0
    assert worker["vs_jax_worst"] == 4.0
    assert payload["results"]["trainer"]["vs_jax_worst"] == 3.0
    assert "vs_jax_median" not in payload["results"]["worker to /ready"]
    assert payload["rounds"] == 3
    assert "| worker to /ready | 6 | 9 | - |" in md
