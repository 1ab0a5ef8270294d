"""The drift detector: quiet on stationary streams, one alarm per drop, reset per model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from river.drift import PageHinkley

from stream_app.drift import DriftAlarm, DriftDetector, _decrease_statistic

pytestmark = pytest.mark.unit

MU, SD = -2.3, 0.75  # mean and per-record spread of log p(x), about the tutorial model's


def batch_means(
    rng: np.random.Generator, sizes: np.ndarray, mu: float = MU, sd: float = SD
) -> list[tuple[float, int]]:
    """Per-batch means of log p(x) for batches of the given sizes (normal, sd / sqrt(n))."""
    means = mu + sd * rng.standard_normal(sizes.size) / np.sqrt(sizes)
    return list(zip(means.tolist(), sizes.tolist(), strict=True))


def feed(det: DriftDetector, batches: list[tuple[float, int]]) -> list[tuple[int, DriftAlarm]]:
    """Feeds batches; returns (records fed up to and including the batch, alarm) per alarm."""
    alarms, seen = [], 0
    for mean, n in batches:
        seen += n
        alarm = det.update(mean, n)
        if alarm is not None:
            alarms.append((seen, alarm))
    return alarms


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("variable", [False, True], ids=["256-record", "1-to-1024-record"])
def test_no_alarm_on_a_long_stationary_stream(seed, variable):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 1025, 10_000) if variable else np.full(20_000, 256)
    det = DriftDetector()
    assert feed(det, batch_means(rng, sizes)) == []
    assert not det.warming_up and det.alarms == 0
    assert det.baseline == pytest.approx(MU, abs=0.02)
    assert det.record_sd == pytest.approx(SD, rel=0.3)
    assert 0 <= det.statistic < det.threshold


# (drop of the mean log p(x) per record in per-record sds, bound on the delay in records): the
# tutorial model's drops for locations moved by 1 and by 0.5 component sds (bench/drift.py).
@pytest.mark.parametrize(("drop_sd", "bound"), [(2.7, 256), (0.67, 768), (0.17, 4096)])
@pytest.mark.parametrize("seed", range(5))
def test_a_drop_alarms_within_a_bound(drop_sd, bound, seed):
    rng = np.random.default_rng(100 + seed)
    det = DriftDetector()
    assert feed(det, batch_means(rng, np.full(500, 256))) == []
    alarms = feed(det, batch_means(rng, np.full(200, 256), mu=MU - drop_sd * SD))
    assert alarms, "no alarm"
    delay, alarm = alarms[0]
    assert delay <= bound
    assert alarm.statistic > alarm.threshold == det.threshold
    assert alarm.baseline == pytest.approx(MU, abs=0.02)
    assert alarm.current < alarm.baseline and alarm.drop_sd > 0
    assert alarm.alarm == 1 and alarm.records == 500 * 256 + delay


def test_one_alarm_per_drop_and_another_for_a_further_drop():
    rng = np.random.default_rng(7)
    det = DriftDetector()
    feed(det, batch_means(rng, np.full(200, 256)))
    first = feed(det, batch_means(rng, np.full(5_000, 256), mu=MU - 0.5))
    assert len(first) == 1, "the alarm repeats while the drop persists"
    assert det.alarms == 1
    second = feed(det, batch_means(rng, np.full(1_000, 256), mu=MU - 1.0))
    assert len(second) == 1 and second[0][1].alarm == 2
    assert second[0][1].baseline == pytest.approx(MU - 0.5, abs=0.02)


def test_reset_sets_a_new_baseline_for_a_new_model():
    rng = np.random.default_rng(8)
    before = batch_means(rng, np.full(200, 256))
    after = batch_means(rng, np.full(2_000, 256), mu=MU - 1.0)

    kept = DriftDetector()
    feed(kept, before)
    assert len(feed(kept, after)) == 1  # the same model: the drop is a drift

    swapped = DriftDetector()
    feed(swapped, before)
    swapped.reset()  # a new model version: its log-likelihoods are its own baseline
    assert swapped.warming_up and swapped.baseline is None and swapped.statistic == 0
    assert feed(swapped, after) == []
    assert swapped.baseline == pytest.approx(MU - 1.0, abs=0.02)


def test_no_alarm_while_warming_up_and_blocks_pool_small_batches():
    det = DriftDetector(warmup_blocks=4, block_records=100)
    for _ in range(39):  # 3.9 blocks of 10 records: still warming up
        assert det.update(MU, 10) is None
    assert det.warming_up and det.records == 300
    assert det.update(MU + 0.01, 10) is None
    assert not det.warming_up and det.records == 400
    assert det.baseline == pytest.approx(MU + 0.00025)


def test_an_increase_does_not_alarm():
    rng = np.random.default_rng(9)
    det = DriftDetector()
    feed(det, batch_means(rng, np.full(200, 256)))
    assert feed(det, batch_means(rng, np.full(2_000, 256), mu=MU + 1.0)) == []


def test_empty_and_non_finite_batches_are_skipped():
    det = DriftDetector(warmup_blocks=2, block_records=1)
    for bad in [(MU, 0), (math.nan, 5), (-math.inf, 5), (math.inf, 1)]:
        assert det.update(*bad) is None
    assert det.skipped == 4 and det.records == 0


def test_a_constant_stream_does_not_divide_by_zero():
    det = DriftDetector(warmup_blocks=2, block_records=1)
    for _ in range(10):
        assert det.update(-1.0, 1) is None
    assert det.record_sd is not None and det.record_sd > 0
    alarm = det.update(-2.0, 1)
    assert alarm is not None and math.isfinite(alarm.statistic)


def reference_statistic(zs: list[float], delta: float) -> float:
    """Page-Hinkley's "down" statistic with alpha = 1, written out (as the docstring says)."""
    total, mean, top = 0.0, 0.0, -1.0
    for i, z in enumerate(zs, 1):
        mean += (z - mean) / i
        total += z - mean + delta
        top = max(top, total)
    return top - total


def test_the_statistic_is_page_hinkleys_down_sum():
    """Pins the River internals `_decrease_statistic` reads (river==0.26.1)."""
    zs = np.random.default_rng(10).standard_normal(200)
    zs[100:] -= 1.5
    ph = PageHinkley(min_instances=1, delta=0.5, threshold=1e9, alpha=1.0, mode="down")
    for i, z in enumerate(zs.tolist(), 1):
        ph.update(z)
        assert _decrease_statistic(ph) == pytest.approx(reference_statistic(zs[:i], 0.5))
    assert _decrease_statistic(ph) > 50


def test_blocks_are_standardised_by_the_in_control_baseline():
    det = DriftDetector(warmup_blocks=3, block_records=4)
    for mean in (-1.0, -1.2, -0.8):
        det.update(mean, 4)
    assert det.baseline == pytest.approx(-1.0)
    # per-record sd: sum n (m - mu)^2 / (B - 1) = 4 * 0.08 / 2
    assert det.record_sd == pytest.approx(math.sqrt(0.16))
    assert det.statistic == pytest.approx(reference_statistic([0.0, -1.0, 1.0], 0.5))
    det.update(-1.0, 4)  # in control: it refines the baseline
    assert det.record_sd == pytest.approx(math.sqrt(0.32 / 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0},
        {"threshold": math.inf},
        {"delta": -0.1},
        {"delta": math.nan},
        {"warmup_blocks": 1},
        {"block_records": 0},
        {"alpha": 0},
        {"alpha": 1.5},
    ],
)
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        DriftDetector(**kwargs)
