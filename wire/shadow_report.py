"""The shadow report: a worker's running totals for a candidate scored in shadow.

While a candidate is in shadow, each worker classifies every slice it serves with the candidate
too, sums the scores (`ShadowTotals`) and reports its running totals now and then; the trainer
keeps each worker's latest report, adds them up and promotes or rejects the candidate. The
totals, their difference and their encoding are defined here once, for both sides: the worker
(`stream_app.shadow`) and the trainer (`trainer.events`, `trainer.cycle`).

The verdict is taken on the mean of the per-record differences, candidate minus served
log p(x), each clipped to [-CLIP_NATS, +CLIP_NATS] (`ShadowTotals.clipped_difference`), not on
the plain difference of the means: one glitch record (x = 1e9, say: log p about -1e17 under one
model and less negative under a broader one) would otherwise outweigh thousands of clean ones.

On the wire a report is an event (`wire.event`) of kind `shadow`, keyed by the model name, whose
`version` is the candidate's, `statistic` the (plain) difference of the totals, and `data` the
totals, the served version they were compared with, the worker that summed them and the
digest of the candidate it scored:

    {"served_version":4,"records":1200,"candidate_log_likelihood":-1530.5,
     "served_log_likelihood":-1601.25,"agreements":1150,"worker":"host-1234",
     "clipped_difference_sum":70.75,"candidate_digest":"3f2a9c0d41b7e865"}

`candidate_digest` (`model_digest`: the first 16 hex digits of SHA-256 over the candidate's
canonical JSON, metadata included) binds a report to the candidate's content, not just to its
version number: versions can come round again (a key upgrade that restarts the numbering, a
rebuilt params topic), and a report about an earlier candidate of the same number, signed and
copied back onto the events topic, must not decide the new one. The trainer counts only reports
whose digest is its candidate's (`trainer.events.ShadowTally`). A report without one is from a
worker older than the field: taken by a trainer that verifies nothing, refused by one that
verifies signatures (every current worker sends a digest).

Reports are cumulative (a worker's later report includes its earlier ones), so a report sent
twice counts once. A report without `clipped_difference_sum` (from a worker older than the
field) is read with the plain difference of its sums clamped to +-CLIP_NATS per record: that
bounds its mean but clips no record, so one glitch among that worker's records can still
swing its share of the verdict (by up to CLIP_NATS per record it scored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from wire.event import Event, EventError

if TYPE_CHECKING:
    from mixture.params import ModelParams

#: The event kind of a shadow report.
KIND = "shadow"

#: Each record's difference of log p(x), candidate minus served, counts for at most this many
#: nats either way in the verdict (a Huber-style bounded influence). One record then moves the
#: clipped mean by at most 2 * CLIP_NATS / records: 0.004 nats at the default
#: GMM_SHADOW_RECORDS (5000), well under the default GMM_SHADOW_TOLERANCE (0.05). A candidate
#: that is truly worse, by a few nats on many records, is still rejected: its typical
#: differences are under the bound, so clipping leaves them as they are.
CLIP_NATS = 10.0

#: A `clipped_difference_sum` may exceed +-CLIP_NATS * records by this relative amount (the
#: rounding of a float sum over many slices) and still be read.
_CLIP_SLACK = 1e-6

#: A candidate digest is this many lowercase hex digits (64 bits of SHA-256: a collision needs
#: about 2**32 candidates of one version, and a forger cannot choose the candidate's content).
DIGEST_CHARS = 16
_DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_CHARS}}}")


def model_digest(model: ModelParams) -> str:
    """The digest of a model's content: the first DIGEST_CHARS hex digits of SHA-256 over its
    JSON form (`ModelParams.to_json`: version, parameters and metadata) with sorted keys and
    compact separators. The worker and the trainer compute it from the same params record, so
    they agree (a model read back from its record has the same JSON form)."""
    canonical = json.dumps(
        model.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()
    return hashlib.sha256(canonical).hexdigest()[:DIGEST_CHARS]


class ShadowReportError(EventError):
    """A `shadow` event whose data is not a valid report; the message (one line) says why."""


class ShadowTotals(NamedTuple):
    """Sums over records scored by both models: a slice's (`stream_app.shadow.compare`), a
    worker's running totals (the sum of its slices'), or every worker's (the sum of theirs).

    records: records both models scored (finite log p(x) under both). candidate_log_likelihood,
    served_log_likelihood: each model's log p(x) summed over them. agreements: records whose MAP
    component is the same under both. clipped_difference_sum: candidate minus served log p(x)
    per record, each clipped to [-CLIP_NATS, CLIP_NATS], summed (what the verdict is taken on).
    """

    records: int = 0
    candidate_log_likelihood: float = 0.0
    served_log_likelihood: float = 0.0
    agreements: int = 0
    clipped_difference_sum: float = 0.0

    def plus(self, other: ShadowTotals) -> ShadowTotals:
        """The totals of both (`+` on a tuple concatenates, hence the name)."""
        return ShadowTotals(
            self.records + other.records,
            self.candidate_log_likelihood + other.candidate_log_likelihood,
            self.served_log_likelihood + other.served_log_likelihood,
            self.agreements + other.agreements,
            self.clipped_difference_sum + other.clipped_difference_sum,
        )

    @classmethod
    def sum_of(cls, parts: Iterable[ShadowTotals]) -> ShadowTotals:
        """The totals of all `parts` (zero totals for none), each field summed by `sum`."""
        parts = list(parts)
        return cls(
            sum(p.records for p in parts),
            sum(p.candidate_log_likelihood for p in parts),
            sum(p.served_log_likelihood for p in parts),
            sum(p.agreements for p in parts),
            sum(p.clipped_difference_sum for p in parts),
        )

    @property
    def difference(self) -> float:
        """Candidate minus served mean log p(x) per record, in nats (0 before any record): what
        the reports, events and metrics show; one glitch record can swing it."""
        if not self.records:
            return 0.0
        return (self.candidate_log_likelihood - self.served_log_likelihood) / self.records

    @property
    def clipped_difference(self) -> float:
        """The mean of the per-record differences clipped to +-CLIP_NATS, in nats (0 before any
        record): what a candidate is judged on, moved by at most 2 * CLIP_NATS / records by any
        one record."""
        return self.clipped_difference_sum / self.records if self.records else 0.0

    @property
    def agreement(self) -> float:
        """The share of records whose MAP component agrees (0 before any record)."""
        return self.agreements / self.records if self.records else 0.0


@dataclasses.dataclass(frozen=True)
class ShadowReport:
    """One worker's running totals of candidate `version` against `served_version`.

    candidate_digest: the scored candidate's `model_digest` (None: a report from a worker older
    than the field)."""

    version: int
    served_version: int
    worker: str
    totals: ShadowTotals = dataclasses.field(default_factory=ShadowTotals)
    candidate_digest: str | None = None

    @property
    def difference(self) -> float:
        """The totals' difference (`ShadowTotals.difference`): the event's statistic."""
        return self.totals.difference

    def added(self, sample: ShadowTotals) -> ShadowReport:
        """The report with `sample` (a slice's totals) added to its totals."""
        return dataclasses.replace(self, totals=self.totals.plus(sample))

    def to_json(self) -> dict[str, Any]:
        """The event's `data` (field order as on the wire since the format's start, later
        fields appended; the digest only when known)."""
        t = self.totals
        data: dict[str, Any] = {
            "served_version": self.served_version,
            "records": t.records,
            "candidate_log_likelihood": t.candidate_log_likelihood,
            "served_log_likelihood": t.served_log_likelihood,
            "agreements": t.agreements,
            "worker": self.worker,
            "clipped_difference_sum": t.clipped_difference_sum,
        }
        if self.candidate_digest is not None:
            data["candidate_digest"] = self.candidate_digest
        return data

    def to_event(self, model: str) -> Event:
        """The `shadow` event of model name `model` that carries the report, stamped now."""
        return Event.now(KIND, model, self.version, self.difference, data=self.to_json())

    @classmethod
    def from_event(cls, event: Event) -> ShadowReport:
        """The report a `shadow` event carries; ShadowReportError if it holds none.

        The event was validated already (no NaN, infinities or nested values in `data`); here
        counts must be integers (no bools, no strings) with agreements within records, sums
        numbers, the clipped sum within +-CLIP_NATS per record (absent, from an older worker: the
        plain difference of the sums clamped to that), the served version an integer, the
        worker a string and the candidate digest, if present, DIGEST_CHARS lowercase hex digits.
        """
        if event.kind != KIND:
            raise ShadowReportError(f"a shadow report is a {KIND!r} event, not {event.kind!r}")
        data = event.data or {}
        served, worker = data.get("served_version"), data.get("worker")
        records, agreements = data.get("records"), data.get("agreements")
        if type(served) is not int:
            raise ShadowReportError(f"served_version must be an integer, got {served!r}")
        if not isinstance(worker, str):
            raise ShadowReportError(f"worker must be a string, got {worker!r}")
        if type(records) is not int or type(agreements) is not int:
            raise ShadowReportError(
                f"records and agreements must be integers, got {records!r} and {agreements!r}"
            )
        if not 0 <= agreements <= records:
            raise ShadowReportError(f"agreements {agreements} not within records {records}")
        lls = []
        for field in ("candidate_log_likelihood", "served_log_likelihood"):
            value = data.get(field)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ShadowReportError(f"{field} must be a number, got {value!r}")
            lls.append(float(value))
        bound = CLIP_NATS * records
        clipped = data.get("clipped_difference_sum")
        if clipped is None:  # an older worker's report: bounded, but no record clipped
            clipped = min(max(lls[0] - lls[1], -bound), bound)
        elif not isinstance(clipped, int | float) or isinstance(clipped, bool):
            raise ShadowReportError(f"clipped_difference_sum must be a number, got {clipped!r}")
        elif abs(clipped) > bound * (1 + _CLIP_SLACK) + _CLIP_SLACK:
            raise ShadowReportError(
                f"clipped_difference_sum {clipped!r} not within +-{CLIP_NATS:g} nats "
                f"per record over {records} records"
            )
        digest = data.get("candidate_digest")
        if digest is not None and not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            raise ShadowReportError(
                f"candidate_digest must be {DIGEST_CHARS} lowercase hex digits, got {digest!r}"
            )
        totals = ShadowTotals(records, lls[0], lls[1], agreements, float(clipped))
        return cls(event.version, served, worker, totals, digest)
