"""The drift detector: quiet on stationary streams, one alarm per drop, reset per model, and no
single record can blind it or raise an alarm."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from stream_app.batch import BatchOutcome
from stream_app.drift import (
    DEFAULT_BLOCK_RECORDS,
    DEFAULT_CLIP_MARGIN,
    DEFAULT_CLIP_QUANTILE,
    DEFAULT_WARMUP_BLOCKS,
    MIN_RECORD_SD,
    DriftAlarm,
    DriftDetector,
    clip_bounds,
)
from stream_app.drift_watch import DriftWatch
from stream_app.metrics import WorkerMetrics
from stream_app.page_hinkley import PageHinkleyDown

pytestmark = pytest.mark.unit

MU, SD = -2.3, 0.75  # mean and per-record spread of log p(x), about the tutorial model's
WARMUP_RECORDS = DEFAULT_WARMUP_BLOCKS * DEFAULT_BLOCK_RECORDS
GLITCH = 5e29  # |log p(x)| of one broken record


def batches(
    rng: np.random.Generator, sizes: np.ndarray, mu: float = MU, sd: float = SD
) -> list[np.ndarray]:
    """Per-record log p(x) of batches of the given sizes (normal, mean mu, spread sd)."""
    values = mu + sd * rng.standard_normal(int(sizes.sum()))
    return np.split(values, np.cumsum(sizes)[:-1])


def feed(det: DriftDetector, slices: list[np.ndarray]) -> list[tuple[int, DriftAlarm]]:
    """Feeds slices; returns (records fed up to and including the slice, alarm) per alarm."""
    alarms, seen = [], 0
    for s in slices:
        seen += len(s)
        alarms += [(seen, alarm) for alarm in det.update(s)]
    return alarms


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("variable", [False, True], ids=["256-record", "1-to-1024-record"])
def test_no_alarm_on_a_long_stationary_stream(seed, variable):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 1025, 10_000) if variable else np.full(20_000, 256)
    det = DriftDetector()
    assert feed(det, batches(rng, sizes)) == []
    assert not det.warming_up and det.alarms == 0 and det.skipped == 0
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
    assert feed(det, batches(rng, np.full(500, 256))) == []
    alarms = feed(det, batches(rng, np.full(200, 256), mu=MU - drop_sd * SD))
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
    feed(det, batches(rng, np.full(200, 256)))
    first = feed(det, batches(rng, np.full(5_000, 256), mu=MU - 0.5))
    assert len(first) == 1, "the alarm repeats while the drop persists"
    assert det.alarms == 1
    second = feed(det, batches(rng, np.full(1_000, 256), mu=MU - 1.0))
    assert len(second) == 1 and second[0][1].alarm == 2
    assert second[0][1].baseline == pytest.approx(MU - 0.5, abs=0.02)


def test_reset_sets_a_new_baseline_for_a_new_model():
    rng = np.random.default_rng(8)
    before = batches(rng, np.full(200, 256))
    after = batches(rng, np.full(2_000, 256), mu=MU - 1.0)

    kept = DriftDetector()
    feed(kept, before)
    assert len(feed(kept, after)) == 1  # the same model: the drop is a drift

    swapped = DriftDetector()
    feed(swapped, before)
    swapped.reset()  # a new model version: its log-likelihoods are its own baseline
    assert swapped.warming_up and swapped.baseline is None and swapped.statistic == 0
    assert swapped.clip_range is None
    assert feed(swapped, after) == []
    assert swapped.baseline == pytest.approx(MU - 1.0, abs=0.02)


def test_no_alarm_while_warming_up_and_blocks_pool_small_batches():
    det = DriftDetector(warmup_blocks=4, block_records=100)
    for _ in range(39):  # 3.9 blocks of 10 records: still warming up
        assert det.update(np.full(10, MU)) == []
    assert det.warming_up and det.records == 300 and det.clip_range is None
    assert det.update(np.full(10, MU + 0.01)) == []
    assert not det.warming_up and det.records == 400
    assert det.baseline == pytest.approx(MU + 0.00025)


def test_an_increase_does_not_alarm():
    rng = np.random.default_rng(9)
    det = DriftDetector()
    feed(det, batches(rng, np.full(200, 256)))
    assert feed(det, batches(rng, np.full(2_000, 256), mu=MU + 1.0)) == []


def test_empty_and_non_finite_records_are_skipped_one_by_one():
    det = DriftDetector(warmup_blocks=2, block_records=1)
    assert det.update([]) == [] and det.update(np.zeros(0)) == []
    assert det.skipped == 0
    for bad in ([math.nan] * 5, [-math.inf] * 5, [math.inf], [math.nan, math.inf, -math.inf]):
        assert det.update(bad) == []
    assert det.skipped == 14 and det.records == 0 and det.warming_up
    # the finite records of a slice count, the others are skipped
    assert det.update([MU, math.nan]) == [] and det.update([-math.inf, MU + 0.1]) == []
    assert det.skipped == 16 and det.records == 2 and not det.warming_up


def test_a_slice_must_be_one_dimensional():
    with pytest.raises(ValueError, match="1-D"):
        DriftDetector().update(np.zeros((2, 3)))


def test_the_caller_may_reuse_its_array():
    det = DriftDetector(warmup_blocks=2, block_records=4)
    buf = np.full(4, -1.0)
    det.update(buf)
    buf[:] = -100.0  # the warm-up kept its own copy
    det.update(np.full(4, -1.0))
    assert det.baseline == pytest.approx(-1.0)


def test_a_constant_stream_does_not_divide_by_zero():
    det = DriftDetector(warmup_blocks=2, block_records=256)
    for _ in range(10):
        assert det.update(np.full(256, -1.0)) == []
    assert det.record_sd is not None and det.record_sd > 0
    lo, hi = det.clip_range or (0.0, 0.0)
    assert lo < -1.0 < hi and hi - lo == pytest.approx(2 * MIN_RECORD_SD)
    # a drop is clipped to one floor sd below the constant, a block of 256 such records to
    # 16 sds of a block mean: the detector is not blind
    alarms = feed(det, [np.full(256, -2.0)] * 10)
    assert alarms and math.isfinite(alarms[0][1].statistic)


def reference_statistic(zs: list[float], delta: float) -> float:
    """Page-Hinkley's "down" statistic with alpha = 1, written out (as the docstring says)."""
    total, mean, top = 0.0, 0.0, -1.0
    for i, z in enumerate(zs, 1):
        mean += (z - mean) / i
        total += z - mean + delta
        top = max(top, total)
    return top - total


def test_the_statistic_is_page_hinkleys_down_sum():
    """The detector's statistic is the one-sided CUSUM its docstring describes."""
    zs = np.random.default_rng(10).standard_normal(200)
    zs[100:] -= 1.5
    ph = PageHinkleyDown(min_instances=1, delta=0.5, threshold=1e9, alpha=1.0)
    for i, z in enumerate(zs.tolist(), 1):
        ph.update(z)
        assert ph.statistic == pytest.approx(reference_statistic(zs[:i], 0.5))
    assert ph.statistic > 50


def test_blocks_are_standardised_by_the_in_control_baseline():
    det = DriftDetector(warmup_blocks=3, block_records=4)
    for mean in (-1.0, -1.2, -0.8):
        det.update(np.full(4, mean))
    # 12 records: the 3rd lowest and the 3rd highest (-1.2, -0.8), median -1.0, margins 2 x 0.2
    assert det.clip_range == pytest.approx((-1.6, -0.4))
    assert det.baseline == pytest.approx(-1.0)
    # per-record sd: sum n (m - mu)^2 / (B - 1) = 4 * 0.08 / 2
    assert det.record_sd == pytest.approx(math.sqrt(0.16))
    assert det.statistic == pytest.approx(reference_statistic([0.0, -1.0, 1.0], 0.5))
    det.update(np.full(4, -1.0))  # in control: it refines the baseline
    assert det.record_sd == pytest.approx(math.sqrt(0.32 / 3))


# ----------------------------------------------------------------------------- clipping


def test_the_clip_range_is_set_when_the_warm_up_ends_and_cleared_with_the_baseline():
    rng = np.random.default_rng(11)
    warmup = batches(rng, np.full(DEFAULT_WARMUP_BLOCKS, 256))
    det = DriftDetector()
    feed(det, warmup[:-1])
    assert det.warming_up and det.clip_range is None
    det.update(warmup[-1])
    values = np.sort(np.concatenate(warmup))
    k = int(DEFAULT_CLIP_QUANTILE * values.size)  # 1 % of 16,384 records: k = 163
    low, mid, high = values[k], (values[8191] + values[8192]) / 2, values[-1 - k]
    m = DEFAULT_CLIP_MARGIN
    assert k > 2 and det.clip_range == pytest.approx(
        (low - m * (mid - low), high + m * (high - mid))
    )
    # every warm-up record was clipped into it before the baseline was estimated
    lo, hi = det.clip_range or (0.0, 0.0)
    assert det.baseline == pytest.approx(np.clip(values, lo, hi).mean())
    # an alarm re-arms the baseline, the range with it
    assert len(feed(det, batches(rng, np.full(50, 256), mu=MU - 3.0))) == 1
    assert det.warming_up and det.clip_range is None
    feed(det, batches(rng, np.full(DEFAULT_WARMUP_BLOCKS, 256), mu=MU - 3.0))
    new_lo, new_hi = det.clip_range or (0.0, 0.0)
    assert new_hi < hi and new_lo < lo  # the range of the new level
    det.reset()
    assert det.clip_range is None


@pytest.mark.parametrize(
    ("values", "quantiles", "expected"),
    [
        # at least the 3rd lowest and the 3rd highest, however small the quantile; margins of
        # 2 x their distance to the median (-1.75 and -2.0)
        ([-1e30, -50.0, -3.0, -2.0, -1.5, -1.0, 0.0, 1e30], (-3.0, -1.0), (-5.5, 0.5)),
        ([-1e30, -1e29, -3.0, -2.0, -1.0, 1e29, 1e30], (-3.0, -1.0), (-5.0, 1.0)),
        # fewer than 5 records: the middle one(s)
        ([-1e30, -2.0, 5.0, 1e30], (-2.0, 5.0), (-9.0, 12.0)),
        ([-1e30, -2.0, 1e30], (-2.0 - MIN_RECORD_SD, -2.0 + MIN_RECORD_SD), None),
    ],
)
def test_tiny_warm_ups_never_let_the_two_lowest_or_highest_set_the_range(
    values, quantiles, expected
):
    expected = expected or quantiles
    assert clip_bounds(np.array(values), 0.005) == pytest.approx(quantiles)
    assert clip_bounds(np.array(values), 0.01, 2.0) == pytest.approx(expected)
    shuffled = np.random.default_rng(12).permutation(values)
    half = len(values) // 2
    det = DriftDetector(warmup_blocks=len(values), block_records=1)  # every record warms up
    det.update(shuffled[:half])
    det.update(shuffled[half:])
    assert (DEFAULT_CLIP_QUANTILE, DEFAULT_CLIP_MARGIN) == (0.01, 2.0)
    assert det.clip_range == pytest.approx(expected)


def test_the_quantiles_and_the_margin_set_the_range_of_a_large_warm_up():
    values = np.arange(10_000, dtype=np.float64)  # median 4,999.5
    assert clip_bounds(values, 0.005) == (50.0, 9_949.0)
    assert clip_bounds(values, 0.01) == (100.0, 9_899.0)
    assert clip_bounds(values, 0.01, 2.0) == (100.0 - 2 * 4_899.5, 9_899.0 + 2 * 4_899.5)
    assert clip_bounds(values[::-1].copy(), 0.01, 1.0) == (100.0 - 4_899.5, 9_899.0 + 4_899.5)


def test_clean_records_are_not_clipped_and_broken_ones_do_not_move_the_range():
    """The range's ends lie far outside the clean data (a normal warm-up: about 7 sd from its
    mean), so a drop keeps its lower tail; 0.1 % broken records hardly move them."""
    rng = np.random.default_rng(15)
    warmup = MU + SD * rng.standard_normal(WARMUP_RECORDS)
    lo, hi = clip_bounds(warmup, DEFAULT_CLIP_QUANTILE, DEFAULT_CLIP_MARGIN)
    assert (MU - lo) / SD == pytest.approx(7.0, abs=0.3)
    assert (hi - MU) / SD == pytest.approx(7.0, abs=0.3)
    fresh = MU + SD * rng.standard_normal(1_000_000)
    assert np.count_nonzero((fresh < lo) | (fresh > hi)) == 0
    broken = warmup.copy()
    hit = rng.choice(broken.size, size=broken.size // 1000, replace=False)
    broken[hit] = GLITCH * rng.choice([-1.0, 1.0], size=hit.size)
    lo_b, hi_b = clip_bounds(broken, DEFAULT_CLIP_QUANTILE, DEFAULT_CLIP_MARGIN)
    assert lo_b == pytest.approx(lo, abs=0.2 * SD) and hi_b == pytest.approx(hi, abs=0.2 * SD)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_quantile": 0.5},
        {"clip_quantile": -0.1},
        {"clip_margin": -1.0},
        {"clip_margin": math.inf},
    ],
)
def test_the_clipping_parameters_are_checked(kwargs):
    with pytest.raises(ValueError, match="clip_"):
        DriftDetector(**kwargs)


def alarm_block(det: DriftDetector, slices: list[np.ndarray]) -> int | None:
    """The 0-based index of the slice that raised the first alarm."""
    for i, s in enumerate(slices):
        if det.update(s):
            return i
    return None


@pytest.mark.parametrize("where", [0, 5_000, WARMUP_RECORDS - 1])
@pytest.mark.parametrize("seed", range(3))
def test_one_broken_record_in_the_warm_up_does_not_hide_a_drop(where, seed):
    rng = np.random.default_rng(200 + seed)
    stream = np.concatenate(
        [
            MU + SD * rng.standard_normal(WARMUP_RECORDS + 100 * 256),
            MU - 3.0 + SD * rng.standard_normal(100 * 256),  # a drop of 3 nats per record
        ]
    )
    broken = stream.copy()
    broken[where] = -GLITCH
    sizes = np.full(stream.size // 256, 256)
    clean, dirty = DriftDetector(), DriftDetector()
    at = alarm_block(clean, np.split(stream, np.cumsum(sizes)[:-1]))
    at_dirty = alarm_block(dirty, np.split(broken, np.cumsum(sizes)[:-1]))
    assert at is not None and at >= DEFAULT_WARMUP_BLOCKS + 100  # not before the drop
    assert at_dirty is not None and abs(at_dirty - at) <= 1
    # and the record did not inflate the baseline's spread
    assert dirty.alarms == clean.alarms == 1


@pytest.mark.parametrize("sign", [-1.0, 1.0], ids=["-5e29", "+5e29"])
@pytest.mark.parametrize("seed", range(3))
def test_one_broken_record_after_the_warm_up_raises_no_alarm(sign, seed):
    rng = np.random.default_rng(300 + seed)
    det = DriftDetector()
    assert feed(det, batches(rng, np.full(DEFAULT_WARMUP_BLOCKS + 50, 256))) == []
    sd_before, (lo, hi) = det.record_sd, det.clip_range or (0.0, 0.0)
    assert sd_before is not None
    slice_ = MU + SD * rng.standard_normal(256)
    twin = copy.deepcopy(det)
    broken = slice_.copy()
    broken[17] = sign * GLITCH
    assert det.update(broken) == [] and twin.update(slice_) == []
    # one record moves the block's standardised mean by at most (range width) / (sqrt(n) sd)
    bound = (hi - lo) / (math.sqrt(256) * sd_before)  # about 3 x 4.65 sd / 16 sd: 0.87
    assert bound < 1 < det.threshold
    assert abs(det.statistic - twin.statistic) <= bound + 1e-9
    # the in-control refinement learned a bounded block: the baseline holds, no later alarm
    assert det.baseline == pytest.approx(twin.baseline, abs=(hi - lo) / 256)
    assert feed(det, batches(rng, np.full(2_000, 256))) == []
    assert det.record_sd == pytest.approx(SD, rel=0.1)


def test_without_clipping_one_record_blinds_the_detector():
    """Why the records are clipped: the unclipped detector, as a comparison."""
    rng = np.random.default_rng(13)
    stream = MU + SD * rng.standard_normal(WARMUP_RECORDS)
    stream[100] = -GLITCH
    det = DriftDetector(clip_quantile=None)
    feed(det, np.split(stream, DEFAULT_WARMUP_BLOCKS))
    assert det.clip_range == (-math.inf, math.inf)
    assert det.record_sd is not None and det.record_sd > 1e20  # blind to any real drop
    assert feed(det, batches(rng, np.full(100, 256), mu=MU - 3.0)) == []


# ---------------------------------------------------------------------------- the drift watch


class Events:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, event) -> None:
        self.sent.append(event)


def outcome(log_px: np.ndarray, version: int = 3) -> BatchOutcome:
    n = log_px.size
    return BatchOutcome(
        [object()] * n,  # type: ignore[list-item]  # only their count matters here
        [],
        np.zeros(n, np.int32),
        np.full(n, math.nan),
        0.0,
        log_px,
        version,
    )


def test_the_drift_watch_feeds_per_record_log_likelihoods():
    rng = np.random.default_rng(14)
    metrics, events = WorkerMetrics(64), Events()
    det = DriftDetector(warmup_blocks=16, block_records=64)
    watch = DriftWatch(det, metrics, events, "gmm", "w-1", lambda: 3)  # type: ignore[arg-type]
    for _ in range(16):
        watch.observe(outcome(MU + SD * rng.standard_normal(64)))
    assert not det.warming_up and det.records == 1024
    watch.observe(outcome(MU - 3.0 + SD * rng.standard_normal(64), version=2))  # an old model's
    assert det.records == 1024
    glitch = MU + SD * rng.standard_normal(65)
    glitch[5], glitch[6] = -GLITCH, math.nan
    watch.observe(outcome(glitch))
    assert det.records == 1024 + 64 and det.skipped == 1 and events.sent == []
    for _ in range(5):
        watch.observe(outcome(MU - 3.0 + SD * rng.standard_normal(64)))
    assert [e.kind for e in events.sent] == ["drift"]
    assert metrics.drift_alarms._value.get() == 1
    watch.reset()
    assert det.warming_up and det.clip_range is None


def test_blocks_are_block_records_long_whatever_the_slices():
    """A slice of 1,024 records is 8 blocks of 128, not one block of 1,024: the warm-up and the
    test see the same blocks however the worker slices its batches."""
    rng = np.random.default_rng(3)
    values = rng.normal(-2.0, 1.0, 20 * 128 + 50)
    one = DriftDetector(warmup_blocks=16, block_records=128)
    assert one.update(values) == []
    small = DriftDetector(warmup_blocks=16, block_records=128)
    for start in range(0, values.size, 7):
        assert small.update(values[start : start + 7]) == []
    for det in (one, small):
        assert not det.warming_up
        assert det.records == 20 * 128  # the last 50 wait for the next slice
    assert one.baseline == pytest.approx(small.baseline)
    assert one.record_sd == pytest.approx(small.record_sd)
    assert one.statistic == pytest.approx(small.statistic)
    # A drop inside one large slice raises the alarm, as it does slice by slice.
    assert len(one.update(rng.normal(-5.0, 1.0, 4096))) == 1


def test_every_alarm_in_one_large_slice_is_returned():
    """A mean that keeps falling: one slice of 65,536 records raises the alarms that slices of
    1,024 raise, each of them returned (the worker counts and reports each)."""
    rng = np.random.default_rng(0)
    warm = rng.normal(-2.0, 1.0, 64 * 256)
    falling = np.concatenate([rng.normal(-2.0 - 0.5 * i, 1.0, 256) for i in range(256)])
    found = []
    for size in (1024, falling.size):
        det = DriftDetector()
        assert det.update(warm) == []
        alarms = [
            a for s in range(0, falling.size, size) for a in det.update(falling[s : s + size])
        ]
        assert [a.alarm for a in alarms] == list(range(1, det.alarms + 1))
        found.append([(a.alarm, a.records) for a in alarms])
    assert len(found[0]) >= 2 and found[0] == found[1]


def test_the_drift_watch_reports_every_alarm_of_a_slice():
    rng = np.random.default_rng(0)
    metrics, events = WorkerMetrics(64), Events()
    det = DriftDetector(warmup_blocks=4, block_records=64)
    watch = DriftWatch(det, metrics, events, "gmm", "w-1", lambda: 3)  # type: ignore[arg-type]
    warm = MU + SD * rng.standard_normal(4 * 64)
    steps = [MU - k * 5 * SD + SD * rng.standard_normal(8 * 64) for k in (1, 2)]
    watch.observe(outcome(np.concatenate([warm, *steps])))  # one slice: warm-up, two drops
    assert det.alarms >= 2
    assert [e.kind for e in events.sent] == ["drift"] * det.alarms
    assert metrics.drift_alarms._value.get() == det.alarms
