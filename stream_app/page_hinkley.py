"""Page-Hinkley's test for a decrease in the mean of a sequence (Page, 1954), as `drift.py` uses it.

The same arithmetic, value for value, as River's `river.drift.PageHinkley(mode="down")` (0.26.1;
tests/unit/stream_app/test_page_hinkley.py runs both on the same sequences): a running mean,
the sum S of (x - mean + delta) faded by alpha, its running maximum M (which starts at -1, as
River's does), and an alarm when M - S exceeds the threshold after `min_instances` values.

Written out rather than imported because the worker's drift detector needs the statistic
M - S itself (the size of a drop, and whether the stream is in control), which River keeps in
private attributes, and because importing `river.drift` imports scikit-learn and SciPy through
River's bundled datasets: about a second of every worker start-up, for these dozen lines.
"""

from __future__ import annotations

import math


class PageHinkleyDown:
    """Page-Hinkley's one-sided test for a drop; `update(x)` then `drift_detected`."""

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not math.isfinite(threshold) or not math.isfinite(delta):
            raise ValueError(f"threshold and delta must be finite, got {threshold!r}, {delta!r}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = False
        self._n = 0.0
        self._mean = 0.0
        self._sum = 0.0
        self._max = -1.0

    @property
    def statistic(self) -> float:
        """M - S: how far the faded sum has fallen below its maximum (an alarm above the
        threshold)."""
        return self._max - self._sum

    def update(self, x: float) -> None:
        """Adds one value; after an alarm, the next value starts the test afresh."""
        if self.drift_detected:
            self._reset()
        self._n += 1.0
        self._mean += (1.0 / self._n) * (x - self._mean)
        self._sum = self.alpha * self._sum + (x - self._mean) + self.delta
        if self._sum > self._max:
            self._max = self._sum
        if self._n >= self.min_instances:
            self.drift_detected = self._max - self._sum > self.threshold
