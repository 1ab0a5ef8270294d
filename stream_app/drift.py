"""Drift alarms: a Page-Hinkley test on block means of per-record log p(x), clipped.

A served model that no longer fits the data shows as a drop in the mean log-likelihood of the
records it scores. `DriftDetector` is fed each delivered slice of a micro-batch as its records'
log p(x), one value per record, and raises one `DriftAlarm` per drop. It is pure (numpy and
`page_hinkley.py`; no Kafka, no metrics, no environment): the worker's drift watch
(`drift_watch.py`) feeds it, resets it when a new model version is installed, and turns an
alarm into a metric and an event.

How it works:

1. **Blocks.** Slices are cut and pooled into blocks of exactly `block_records` records (what
   is left of a slice waits for the next). The statistic's time scale is then records, not
   slices, whatever their sizes. A non-finite value (a record with log p(x) = -inf) is skipped and
   counted in `skipped`; an empty slice does nothing.
2. **Clipping.** Every record's log p(x) is clipped into the baseline's range [low, high]
   before it enters a block mean. The range is set from the warm-up's records by `clip_bounds`
   with q = `clip_quantile` (1 %) and m = `clip_margin` (2): with Q(p) their p-quantile,

       low  = Q(q) - m (Q(0.5) - Q(q)),    high = Q(1 - q) + m (Q(1 - q) - Q(0.5)),

   where Q(q) and Q(1 - q) are never one of the 2 lowest or highest records of a tiny warm-up.
   The quantiles are robust (0.1 % broken records move Q(0.01) only to about the clean
   Q(0.009)), and the margins put the range's ends far outside the clean data, so that clean
   records are almost never clipped and a drop keeps all of its signal (most of a small
   shift's lives in the lower tail of log p(x)), while a broken record still counts as no more
   than `low` or `high`. The warm-up keeps its records until it ends (its blocks:
   `warmup_blocks` x `block_records` values), sets the range from them,
   and clips them too before the baseline is estimated from its block means.
3. **Baseline.** The first `warmup_blocks` blocks after a reset set the baseline: the mean
   log p(x) per record, mu, and its spread per record, sigma, estimated from the block means
   (a block of n records has variance sigma^2 / n, so sigma^2 = sum n (m - mu)^2 / (B - 1)).
   No alarm is raised while warming up. Afterwards every block seen while the statistic is
   below half the threshold ("in control") refines mu and sigma: a warm-up that happened to
   underestimate sigma by 10-15 % otherwise raised most of the false alarms measured.
4. **Test.** Each block becomes z = (m - mu) sqrt(n) / sigma, about N(0, 1) while the model
   fits as it did at the baseline, and is fed to Page-Hinkley's test for a drop
   (`page_hinkley.py`: River's `PageHinkley` in mode "down", written out), the warm-up
   blocks first, so that its running mean starts from the baseline. Page-Hinkley
   accumulates (z - running mean + delta) and alarms when that sum falls more than
   `threshold` below its maximum. `threshold` and `delta` are therefore in standard deviations
   of a block mean; with `alpha` = 1 (no forgetting) this is the one-sided CUSUM with
   reference value `delta`: a drop of the block mean by more than `delta` sd accumulates.
5. **Once per drift.** After an alarm the detector warms up again on the data as it now is,
   with a new range: another alarm needs a further drop below the new level. A new model
   version calls `reset()`, which does the same (the baseline and its range belong to the
   model).

Only drops alarm: a change that makes the model fit better (or no worse) is not a drift here.

What one record can do: clipped, it moves its block's mean by at most (high - low) / n <=
(high - low) / block_records, whatever its value, and z by at most (high - low) / (sqrt(n)
sigma), where high - low = (1 + m) (Q(1 - q) - Q(q)). For the benchmark's model (the
tutorial's fitted mixture: Q(0.01), Q(0.5), Q(0.99) about -4.50, -1.49, -0.96, so a range
about [-10.5, 0.1], 10.6 nats wide; sigma 0.75) that is 0.89 standard deviations of a
256-record block mean: one record moves the statistic by at most 0.89 against the threshold of
16, so it cannot raise an alarm (at most it brings forward by a block one that the noise alone
was about to raise), and in the warm-up it makes one of 64 block means at most 0.89 sd wrong,
which cannot inflate the baseline's spread much (sigma^2 grows by at most (0.89^2 + 1.78 |z|)
/ 63: 10 % for a block 3 sd off) and moves mu by at most 10.6 / 16,384 nats. One record moves
the range itself only from one order statistic to the next. At `block_records` 1 the bound is
14 sd, under the threshold but not by much: blocks that small are not what the test is made
for (this model's clean records alone reach 15 sd below the mean). Unclipped, one record with
log p(x) = -5e29 in the warm-up made sigma about 4e27 (blind to any later drop), and one after
it raised an alarm.

What clipping costs, measured by bench/drift.py at the defaults: almost nothing on clean data.
About 1.7e-5 of that model's clean records lie below `low` (3e-5 after a shift by 0.25
component sds, 5e-5 after 0.5 sds) and none above `high` (its log p(x) is at most -0.96), so
the clipped detector saw the same false alarms (1 in 4,000,000 stationary batches) and the
same delays as the unclipped one: after a shift by 0.25 sds 45 of 200 streams raised no alarm
within 102,400 records either way (214 of 1,000 with either); 0.5 to 2 sds, the same median,
p90 and worst. Clipping at the quantiles themselves (q = 0.5 %, m = 0) threw part of that
tail away: 52 of 200 missed (m = 0.5: 49, m = 1: 46, m = 1.5 and 3: 45). The price of the far
ends is paid by broken records: each counts as `low`, about 8.9 nats below the mean, so 0.1 %
of them add 7 % to the spread of log p(x) (0.80 instead of 0.75) and blunt the smallest
shift: with them 76 of 200 streams moved by 0.25 sds were missed (unclipped: 84, and 9,951
false alarms instead of 0; q = 0.5 %, m = 0: 54; m = 1: 58); 0.5 sds and more alarm within a
block of the clean delays.

Why Page-Hinkley and not River's ADWIN: the signal is one number per block whose noise we can
standardise, and we want only one direction (a drop). Page-Hinkley in mode "down" is
one-sided, O(1) per update, and on standardised input its threshold is in standard deviations
with the CUSUM's known false-alarm behaviour. ADWIN is two-sided (an improvement would alarm
too), its cut test assumes bounded values, and its false alarms are set by a confidence
parameter that is hard to translate into alarms per batch.

Their false-alarm rate and detection delays at the defaults (threshold 16, delta 0.5, warm-up 64
blocks of 256 records, clipping with q = 1 % and m = 2), with and without 0.1 % broken records,
are measured by `python -m bench.drift`: bench/results/drift.md.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import ArrayLike

from stream_app.page_hinkley import PageHinkleyDown

#: Defaults (bench/results/drift.md says what they give).
DEFAULT_THRESHOLD = 16.0
DEFAULT_DELTA = 0.5
DEFAULT_WARMUP_BLOCKS = 64
DEFAULT_BLOCK_RECORDS = 256
DEFAULT_ALPHA = 1.0
#: The clipping range: the warm-up records' q- and (1 - q)-quantiles with this q, each moved
#: DEFAULT_CLIP_MARGIN times its distance to their median further out (`clip_bounds`).
DEFAULT_CLIP_QUANTILE = 0.01
DEFAULT_CLIP_MARGIN = 2.0
#: However small the warm-up, its range is never set by its MIN_CLIPPED lowest or highest records.
MIN_CLIPPED = 2
#: Floor on the per-record spread of log p(x), so that a constant stream does not divide by 0.
MIN_RECORD_SD = 1e-6


@dataclasses.dataclass(frozen=True)
class DriftAlarm:
    """A drop in mean log p(x) was detected.

    statistic: the Page-Hinkley statistic (standard deviations of a block mean) when it
    crossed `threshold`. baseline: mean log p(x) per record over the warm-up. current: mean
    log p(x) per record of the block that raised the alarm. Both are means of records clipped
    into the baseline's range. record_sd: the warm-up's spread of log p(x) per record.
    records: records seen since the baseline was set (reset or previous alarm), warm-up
    included. alarm: this detector's alarm count, this one included.
    """

    statistic: float
    threshold: float
    baseline: float
    current: float
    record_sd: float
    records: int
    alarm: int

    @property
    def drop_sd(self) -> float:
        """How far the alarm's block sits below the baseline, in per-record standard deviations."""
        return (self.baseline - self.current) / self.record_sd


def clip_bounds(values: np.ndarray, quantile: float, margin: float = 0.0) -> tuple[float, float]:
    """The clipping range of a warm-up's N records (N >= 1): its `quantile`-quantiles, each
    moved `margin` times its distance to the median further out.

    With Q(q), Q(0.5), Q(1 - q) the values at 0-based positions k, the middle (the mean of the
    two middle values for even N) and N - 1 - k of the sorted values, k = max(floor(quantile N),
    MIN_CLIPPED): [Q(q) - margin (Q(0.5) - Q(q)), Q(1 - q) + margin (Q(1 - q) - Q(0.5))]. Its
    ends are never set by the MIN_CLIPPED lowest or highest records alone (for fewer than
    2 MIN_CLIPPED + 1 records, Q(q) and Q(1 - q) are the middle value(s)). A range narrower
    than 2 MIN_RECORD_SD is widened to that about its middle, so that a warm-up of equal values
    still sees a drop (clipped to MIN_RECORD_SD below it, one floor sd).
    """
    n = values.size
    k = min(max(int(quantile * n), MIN_CLIPPED), (n - 1) // 2)
    part = np.partition(values, sorted({k, (n - 1) // 2, n // 2, n - 1 - k}))
    lo, hi = float(part[k]), float(part[n - 1 - k])
    mid = (float(part[(n - 1) // 2]) + float(part[n // 2])) / 2
    lo, hi = lo - margin * (mid - lo), hi + margin * (hi - mid)
    if hi - lo < 2 * MIN_RECORD_SD:
        mid = lo + (hi - lo) / 2
        lo, hi = min(lo, mid - MIN_RECORD_SD), max(hi, mid + MIN_RECORD_SD)
    return lo, hi


class DriftDetector:
    """A one-sided Page-Hinkley test on block means of clipped log p(x), standardised by a
    warm-up.

    Call `update(log_px)` once per slice with its records' log p(x); it returns a `DriftAlarm`
    on the block where a drop is detected and None otherwise. Call `reset()` when a new model
    version is installed. Not thread-safe; each update is O(slice) (O(warm-up records) when a
    warm-up ends). `clip_quantile` and `clip_margin` set the clipping range (`clip_bounds`);
    `clip_quantile` None feeds the values unclipped (the comparison in bench/drift.py).
    """

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        delta: float = DEFAULT_DELTA,
        warmup_blocks: int = DEFAULT_WARMUP_BLOCKS,
        block_records: int = DEFAULT_BLOCK_RECORDS,
        alpha: float = DEFAULT_ALPHA,
        clip_quantile: float | None = DEFAULT_CLIP_QUANTILE,
        clip_margin: float = DEFAULT_CLIP_MARGIN,
    ) -> None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta must be a non-negative number, got {delta!r}")
        if warmup_blocks < 2:
            raise ValueError(f"warmup_blocks must be >= 2, got {warmup_blocks!r}")
        if block_records < 1:
            raise ValueError(f"block_records must be >= 1, got {block_records!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if clip_quantile is not None and not 0 <= clip_quantile < 0.5:
            raise ValueError(f"clip_quantile must be in [0, 0.5) or None, got {clip_quantile!r}")
        if not (math.isfinite(clip_margin) and clip_margin >= 0):
            raise ValueError(f"clip_margin must be a non-negative number, got {clip_margin!r}")
        self.threshold = float(threshold)
        self.delta = float(delta)
        self.warmup_blocks = int(warmup_blocks)
        self.block_records = int(block_records)
        self.alpha = float(alpha)
        self.clip_quantile = None if clip_quantile is None else float(clip_quantile)
        self.clip_margin = float(clip_margin)
        self.alarms = 0
        self.skipped = 0
        self.reset()

    def reset(self) -> None:
        """Forget the baseline (a new model version): warm up again from the next slice."""
        self._rearm()
        self._pending_sum = 0.0
        self._pending_records = 0

    def _rearm(self) -> None:
        self._ph: PageHinkleyDown | None = None
        self._clip: tuple[float, float] | None = None
        # The warm-up's records (finite values, a block's part at a time) and its blocks' sizes.
        self._warmup_values: list[np.ndarray] = []
        self._warmup_sizes: list[int] = []
        self._records = 0
        # The baseline: block means as deviations d = m - shift from the first block's mean
        # (for precision); blocks B, records W, sum n d, sum n d^2.
        self._shift = 0.0
        self._blocks = 0
        self._weight = 0
        self._sum = 0.0
        self._sum_sq = 0.0

    def _learn(self, block_mean: float, n: int) -> None:
        if self._blocks == 0:
            self._shift = block_mean
        d = block_mean - self._shift
        self._blocks += 1
        self._weight += n
        self._sum += n * d
        self._sum_sq += n * d * d

    @property
    def warming_up(self) -> bool:
        """True until the baseline is set (no alarm can be raised meanwhile)."""
        return self._ph is None

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """(low, high): every record's log p(x) is clipped into it before block means; set from
        the warm-up's records when it ends, None while warming up ((-inf, inf) without
        clipping)."""
        return self._clip

    @property
    def baseline(self) -> float | None:
        """Mean log p(x) per record of the in-control blocks; None while warming up."""
        if self._ph is None:
            return None
        return self._shift + self._sum / self._weight

    @property
    def record_sd(self) -> float | None:
        """Spread of log p(x) per record estimated from the in-control block means (a block
        of n records has variance sd^2 / n); None while warming up."""
        if self._ph is None:
            return None
        ss = self._sum_sq - self._sum * self._sum / self._weight
        return max(math.sqrt(max(ss, 0.0) / (self._blocks - 1)), MIN_RECORD_SD)

    @property
    def records(self) -> int:
        """Records in completed blocks since the baseline was last cleared."""
        return self._records

    @property
    def statistic(self) -> float:
        """The current Page-Hinkley statistic (0 while warming up); an alarm at > threshold."""
        return 0.0 if self._ph is None else self._ph.statistic

    def update(self, log_px: ArrayLike) -> list[DriftAlarm]:
        """Adds one slice's per-record log p(x) (1-D), in blocks of exactly `block_records`
        whatever the slice's size (the rest waits for the next slice); returns the alarms its
        blocks raised, in order (a large slice may hold a drop, the warm-up after it, and
        another drop). Non-finite values are skipped (and counted in `skipped`)."""
        values = np.asarray(log_px, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"log_px must be 1-D, got shape {values.shape}")
        if not math.isfinite(np.add.reduce(values)):  # a non-finite value (or an overflow)
            finite = np.isfinite(values)
            self.skipped += values.size - int(np.count_nonzero(finite))
            values = values[finite]
        alarms = []
        start = 0
        while start < values.size:
            stop = start + self.block_records - self._pending_records
            alarm = self._add(values[start:stop])
            if alarm is not None:
                alarms.append(alarm)
            start = stop
        return alarms

    def _add(self, values: np.ndarray) -> DriftAlarm | None:
        """Adds values that complete at most one block."""
        if self._clip is None:  # warming up: the range is not known yet
            self._warmup_values.append(np.array(values))  # a copy: the caller's may change
        else:
            lo, hi = self._clip
            self._pending_sum += float(np.add.reduce(np.minimum(np.maximum(values, lo), hi)))
        self._pending_records += values.size
        if self._pending_records < self.block_records:
            return None
        n = self._pending_records
        block_mean = self._pending_sum / n
        self._pending_sum, self._pending_records = 0.0, 0
        self._records += n
        if self._ph is None:
            self._warmup_sizes.append(n)
            if len(self._warmup_sizes) >= self.warmup_blocks:
                return self._end_warmup()
            return None
        in_control = self._ph.statistic < self.threshold / 2
        self._ph.update(self._standardise(block_mean, n))
        if self._ph.drift_detected:
            return self._alarm(block_mean)
        if in_control:
            self._learn(block_mean, n)
        return None

    def _standardise(self, block_mean: float, n: int) -> float:
        baseline, sd = self.baseline, self.record_sd
        assert baseline is not None and sd is not None
        return (block_mean - baseline) * math.sqrt(n) / sd

    def _end_warmup(self) -> DriftAlarm | None:
        values = np.concatenate(self._warmup_values)
        sizes = np.array(self._warmup_sizes)
        self._warmup_values, self._warmup_sizes = [], []
        if self.clip_quantile is None:
            self._clip = (-math.inf, math.inf)
        else:
            self._clip = clip_bounds(values, self.clip_quantile, self.clip_margin)
            values = np.clip(values, *self._clip)
        means = (np.add.reduceat(values, np.cumsum(sizes) - sizes) / sizes).tolist()
        warmup = list(zip(means, sizes.tolist(), strict=True))
        for m, n in warmup:
            self._learn(m, n)
        self._ph = PageHinkleyDown(
            min_instances=1, delta=self.delta, threshold=self.threshold, alpha=self.alpha
        )
        # The warm-up blocks give Page-Hinkley's running mean its baseline. A drop inside the
        # warm-up can already cross the threshold; it is reported like any other.
        for m, n in warmup:
            self._ph.update(self._standardise(m, n))
            if self._ph.drift_detected:
                return self._alarm(warmup[-1][0])
        return None

    def _alarm(self, block_mean: float) -> DriftAlarm:
        baseline, sd = self.baseline, self.record_sd
        assert self._ph is not None and baseline is not None and sd is not None
        self.alarms += 1
        alarm = DriftAlarm(
            statistic=self._ph.statistic,
            threshold=self.threshold,
            baseline=baseline,
            current=block_mean,
            record_sd=sd,
            records=self._records,
            alarm=self.alarms,
        )
        self._rearm()  # warm up again at the new level, with a new range: one alarm per drop
        return alarm
