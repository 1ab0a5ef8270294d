"""What the worker watches beside serving: a candidate scored in shadow, and drift alarms.

- **Shadow.** While the params topic holds a candidate of the served name (GMM_PROMOTION=shadow
  on the trainer), each slice the worker serves is also classified by the candidate, on the
  inference thread, without emitting its assignments. `compare` scores a slice (its
  `ShadowTotals`: the records scored, both models' log p(x) on them and how many MAP
  assignments agree); `ShadowScores` sums them into the running `ShadowReport` of the current
  candidate, which the worker exports and reports on the events topic, where the trainer adds
  up every worker's and promotes or rejects the candidate. The totals and the report are
  `wire.shadow_report`'s.
- **Drift.** Each delivered slice's mean log p(x) feeds a `DriftDetector`; an alarm becomes a
  metric and a `drift` event, and the trainer refits.
"""

from __future__ import annotations

import numpy as np

from mixture.classify import Classification
from wire.shadow_report import ShadowReport, ShadowTotals

#: One slice scored by both models: its totals (a worker's running totals are their sum).
ShadowSample = ShadowTotals


def compare(served: Classification, candidate: Classification) -> ShadowTotals:
    """Sums of both models' log p(x) and the MAP agreements over the same records (those both
    found finite)."""
    finite = np.isfinite(served.log_likelihood) & np.isfinite(candidate.log_likelihood)
    served_map = np.argmax(served.probs, axis=1)
    candidate_map = np.argmax(candidate.probs, axis=1)
    return ShadowTotals(
        int(finite.sum()),
        float(candidate.log_likelihood[finite].sum()),
        float(served.log_likelihood[finite].sum()),
        int((served_map == candidate_map)[finite].sum()),
    )


class ShadowScores:
    """This worker's running report of the current candidate (kept for that one only).

    worker: names this worker in its reports (the trainer keeps each worker's latest).
    """

    def __init__(self, worker: str = "") -> None:
        self.worker = worker
        self.current: ShadowReport | None = None
        self.reported_records = -1

    def stop(self) -> None:
        """Drops the totals (the candidate was withdrawn)."""
        self.current = None

    def add(self, version: int, served_version: int, sample: ShadowTotals) -> None:
        """Adds a slice's totals; a sample of another pair of versions starts new totals (the
        served model changed under the candidate, so earlier records compared another one)."""
        cur = self.current
        if cur is None or cur.version != version or cur.served_version != served_version:
            cur = ShadowReport(version, served_version, self.worker)
            self.reported_records = -1
        self.current = cur.added(sample)

    def to_report(self) -> ShadowReport | None:
        """The report if its totals changed since the last one (then marked reported)."""
        cur = self.current
        if cur is None or cur.totals.records == self.reported_records:
            return None
        self.reported_records = cur.totals.records
        return cur
