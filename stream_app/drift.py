"""Drift alarms: a Page-Hinkley test on the stream of per-slice mean log p(x).

A served model that no longer fits the data shows as a drop in the mean log-likelihood of the
records it scores. `DriftDetector` is fed one value per delivered slice of a micro-batch (its
mean log p(x) and its record count) and raises one `DriftAlarm` per drop. It is pure (no Kafka,
no metrics, no environment): the worker's drift watch (`drift_watch.py`) feeds it, resets it
when a new model version is installed, and turns an alarm into a metric and an event.

How it works:

1. **Blocks.** Slices are pooled into blocks of at least `block_records` records (the
   record-weighted mean of their means); a slice at least that large is a block alone.
   The statistic's time scale is then records, not slices, whatever their sizes.
2. **Baseline.** The first `warmup_blocks` blocks after a reset set the baseline: the mean
   log p(x) per record, mu, and its spread per record, sigma, estimated from the block means
   (a block of n records has variance sigma^2 / n, so sigma^2 = sum n (m - mu)^2 / (B - 1)).
   No alarm is raised while warming up. Afterwards every block seen while the statistic is
   below half the threshold ("in control") refines mu and sigma: a warm-up that happened to
   underestimate sigma by 10-15 % otherwise raised most of the false alarms measured.
3. **Test.** Each block becomes z = (m - mu) sqrt(n) / sigma, about N(0, 1) while the model
   fits as it did at the baseline, and is fed to River's `PageHinkley` in mode "down" (the
   warm-up blocks first, so that its running mean starts from the baseline). Page-Hinkley
   accumulates (z - running mean + delta) and alarms when that sum falls more than
   `threshold` below its maximum. `threshold` and `delta` are therefore in standard deviations
   of a block mean; with `alpha` = 1 (no forgetting) this is the one-sided CUSUM with
   reference value `delta`: a drop of the block mean by more than `delta` sd accumulates.
4. **Once per drift.** After an alarm the detector warms up again on the data as it now is:
   another alarm needs a further drop below the new level. A new model version calls
   `reset()`, which does the same (the baseline belongs to the model).

Only drops alarm: a change that makes the model fit better (or no worse) is not a drift here.
A non-finite mean (a slice with log p(x) = -inf) or an empty slice is skipped and counted.

Why Page-Hinkley and not River's ADWIN: the signal is one number per block whose noise we can
standardise, and we want only one direction (a drop). Page-Hinkley in mode "down" is
one-sided, O(1) per update, and on standardised input its threshold is in standard deviations
with the CUSUM's known false-alarm behaviour. ADWIN is two-sided (an improvement would alarm
too), its cut test assumes bounded values, and its false alarms are set by a confidence
parameter that is hard to translate into alarms per batch.

Their false-alarm rate and detection delays at the defaults (threshold 16, delta 0.5, warm-up 64
blocks of 256 records) are measured by `python -m bench.drift`: bench/results/drift.md.
"""

from __future__ import annotations

import dataclasses
import math

from river.drift import PageHinkley

#: Defaults (bench/results/drift.md says what they give).
DEFAULT_THRESHOLD = 16.0
DEFAULT_DELTA = 0.5
DEFAULT_WARMUP_BLOCKS = 64
DEFAULT_BLOCK_RECORDS = 256
DEFAULT_ALPHA = 1.0
#: Floor on the per-record spread of log p(x), so that a constant stream does not divide by 0.
MIN_RECORD_SD = 1e-6


@dataclasses.dataclass(frozen=True)
class DriftAlarm:
    """A drop in mean log p(x) was detected.

    statistic: the Page-Hinkley statistic (standard deviations of a block mean) when it
    crossed `threshold`. baseline: mean log p(x) per record over the warm-up. current: mean
    log p(x) per record of the block that raised the alarm. record_sd: the warm-up's spread of
    log p(x) per record. records: records seen since the baseline was set (reset or previous
    alarm), warm-up included. alarm: this detector's alarm count, this one included.
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


class DriftDetector:
    """A one-sided Page-Hinkley test on per-slice mean log p(x), standardised by a warm-up.

    Call `update(mean_log_px, records)` once per slice; it returns a `DriftAlarm` on the
    block where a drop is detected and None otherwise. Call `reset()` when a new model version
    is installed. Not thread-safe; each update is O(1) (O(warmup_blocks) when a warm-up ends).
    """

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        delta: float = DEFAULT_DELTA,
        warmup_blocks: int = DEFAULT_WARMUP_BLOCKS,
        block_records: int = DEFAULT_BLOCK_RECORDS,
        alpha: float = DEFAULT_ALPHA,
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
        self.threshold = float(threshold)
        self.delta = float(delta)
        self.warmup_blocks = int(warmup_blocks)
        self.block_records = int(block_records)
        self.alpha = float(alpha)
        self.alarms = 0
        self.skipped = 0
        self.reset()

    def reset(self) -> None:
        """Forget the baseline (a new model version): warm up again from the next slice."""
        self._rearm()
        self._pending_sum = 0.0
        self._pending_records = 0

    def _rearm(self) -> None:
        self._ph: PageHinkley | None = None
        self._warmup: list[tuple[float, int]] = []
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
        return 0.0 if self._ph is None else _decrease_statistic(self._ph)

    def update(self, mean_log_px: float, records: int) -> DriftAlarm | None:
        """Adds one slice; returns an alarm if this slice completed a block that did."""
        mean = float(mean_log_px)
        if records <= 0 or not math.isfinite(mean):
            self.skipped += 1
            return None
        self._pending_sum += mean * records
        self._pending_records += records
        if self._pending_records < self.block_records:
            return None
        n = self._pending_records
        block_mean = self._pending_sum / n
        self._pending_sum, self._pending_records = 0.0, 0
        self._records += n
        if self._ph is None:
            self._warmup.append((block_mean, n))
            self._learn(block_mean, n)
            if len(self._warmup) >= self.warmup_blocks:
                return self._end_warmup()
            return None
        in_control = _decrease_statistic(self._ph) < self.threshold / 2
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
        self._ph = PageHinkley(
            min_instances=1,
            delta=self.delta,
            threshold=self.threshold,
            alpha=self.alpha,
            mode="down",
        )
        # The warm-up blocks give Page-Hinkley's running mean its baseline. A drop inside the
        # warm-up can already cross the threshold; it is reported like any other.
        warmup, self._warmup = self._warmup, []
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
            statistic=_decrease_statistic(self._ph),
            threshold=self.threshold,
            baseline=baseline,
            current=block_mean,
            record_sd=sd,
            records=self._records,
            alarm=self.alarms,
        )
        self._rearm()  # warm up again at the new level: one alarm per drop
        return alarm


def _decrease_statistic(ph: PageHinkley) -> float:
    """Page-Hinkley's "down" statistic (max of the cumulative sum minus its current value).

    River exposes only `drift_detected`; the sums are private attributes of the pinned
    version (river==0.26.1, tests/unit/stream_app/test_drift.py checks them).
    """
    return float(ph._max_decrease - ph._sum_decrease)
