"""What the worker watches beside serving: a candidate scored in shadow, and drift alarms.

- **Shadow.** While the params topic holds a candidate of the served name (GMM_PROMOTION=shadow
  on the trainer), each slice the worker serves is also classified by the candidate, on the
  inference thread, without emitting its assignments. `ShadowScores` sums, per candidate
  version, the records scored, both models' log p(x) on them and how many MAP assignments
  agree; the worker exports them and reports its running totals on the events topic, where the
  trainer adds up every worker's and promotes or rejects the candidate.
- **Drift.** Each delivered slice's mean log p(x) feeds a `DriftDetector`; an alarm becomes a
  metric and a `drift` event, and the trainer refits.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from mixture.classify import Classification


class ShadowSample(NamedTuple):
    """One slice scored by both models (over the records both found finite)."""

    records: int
    candidate_log_likelihood: float
    served_log_likelihood: float
    agreements: int


def compare(served: Classification, candidate: Classification) -> ShadowSample:
    """Sums of both models' log p(x) and the MAP agreements over the same records."""
    finite = np.isfinite(served.log_likelihood) & np.isfinite(candidate.log_likelihood)
    served_map = np.argmax(served.probs, axis=1)
    candidate_map = np.argmax(candidate.probs, axis=1)
    return ShadowSample(
        int(finite.sum()),
        float(candidate.log_likelihood[finite].sum()),
        float(served.log_likelihood[finite].sum()),
        int((served_map == candidate_map)[finite].sum()),
    )


@dataclasses.dataclass
class ShadowTotals:
    """A candidate version's running totals on this worker."""

    version: int
    served_version: int
    records: int = 0
    candidate_log_likelihood: float = 0.0
    served_log_likelihood: float = 0.0
    agreements: int = 0

    def add(self, sample: ShadowSample) -> None:
        self.records += sample.records
        self.candidate_log_likelihood += sample.candidate_log_likelihood
        self.served_log_likelihood += sample.served_log_likelihood
        self.agreements += sample.agreements

    @property
    def difference(self) -> float:
        """Candidate minus served mean log p(x) per record (0 before any record)."""
        if not self.records:
            return 0.0
        return (self.candidate_log_likelihood - self.served_log_likelihood) / self.records

    def to_json(self) -> dict[str, float | int]:
        return {
            "served_version": self.served_version,
            "records": self.records,
            "candidate_log_likelihood": self.candidate_log_likelihood,
            "served_log_likelihood": self.served_log_likelihood,
            "agreements": self.agreements,
        }


class ShadowScores:
    """Per candidate version, this worker's totals (kept for the current candidate only)."""

    def __init__(self) -> None:
        self.current: ShadowTotals | None = None
        self.reported_records = -1

    def start(self, version: int, served_version: int) -> None:
        if self.current is None or self.current.version != version:
            self.current = ShadowTotals(version, served_version)
            self.reported_records = -1

    def stop(self) -> None:
        self.current = None

    def add(self, version: int, served_version: int, sample: ShadowSample) -> None:
        """Adds a slice's sample; a sample of another pair of versions starts new totals (the
        served model changed under the candidate, so earlier records compared another one)."""
        cur = self.current
        if cur is None or cur.version != version or cur.served_version != served_version:
            self.current = cur = ShadowTotals(version, served_version)
            self.reported_records = -1
        cur.add(sample)

    def to_report(self) -> ShadowTotals | None:
        """The totals if they changed since the last report (then marked reported)."""
        cur = self.current
        if cur is None or cur.records == self.reported_records:
            return None
        self.reported_records = cur.records
        return cur
