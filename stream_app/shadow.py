"""Shadow scoring: a candidate model of the served name, scored on the same slices as the served
model and never emitted.

While the params topic holds a candidate of the served name (GMM_PROMOTION=shadow on the
trainer), it is compiled beside the served model; after each slice's outputs have left, the
candidate classifies the same points on the inference thread and `compare` scores the slice
(`ShadowTotals`: the records scored, both models' log p(x) on them, how many MAP assignments
agree, and the per-record differences of log p(x) clipped to +-`CLIP_NATS` and summed: what
the trainer judges the candidate on, so that one glitch record cannot swing the verdict).
`ShadowScores` sums them into the candidate's running `ShadowReport`, exported as metrics and
sent on the events topic every `GMM_SHADOW_REPORT_SECONDS` when it changed, with the
candidate's digest (`wire.shadow_report.model_digest`), so that the trainer counts it for that
candidate only and not for a later one that reuses its version number; the trainer adds up
every worker's and promotes or rejects the candidate. The totals and the report are
`wire.shadow_report`'s. A candidate never delays serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import Executor

import numpy as np

from mixture.classify import Classification
from mixture.params import ModelParams
from stream_app.batch import ParsedSlice, classify_slice
from stream_app.event_sink import EventSink
from stream_app.metrics import WorkerMetrics
from stream_app.model_state import ModelHolder, ServingModel
from wire.shadow_report import CLIP_NATS, ShadowReport, ShadowTotals, model_digest

log = logging.getLogger(__name__)


def compare(served: Classification, candidate: Classification) -> ShadowTotals:
    """Sums of both models' log p(x), the MAP agreements and the per-record differences of
    log p(x) (candidate minus served, each clipped to +-CLIP_NATS) over the same records (those
    both found finite)."""
    finite = np.isfinite(served.log_likelihood) & np.isfinite(candidate.log_likelihood)
    served_map = np.argmax(served.probs, axis=1)
    candidate_map = np.argmax(candidate.probs, axis=1)
    candidate_ll, served_ll = candidate.log_likelihood[finite], served.log_likelihood[finite]
    # In float64, where the difference of two finite float32 values cannot overflow.
    difference = np.asarray(candidate_ll, np.float64) - np.asarray(served_ll, np.float64)
    return ShadowTotals(
        int(finite.sum()),
        float(candidate_ll.sum()),
        float(served_ll.sum()),
        int((served_map == candidate_map)[finite].sum()),
        float(np.clip(difference, -CLIP_NATS, CLIP_NATS).sum()),
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

    def add(
        self,
        version: int,
        served_version: int,
        sample: ShadowTotals,
        candidate_digest: str | None = None,
    ) -> None:
        """Adds a slice's totals of the candidate `version` (its `model_digest`:
        `candidate_digest`); a sample of another pair of versions or another candidate starts
        new totals (the served model changed under the candidate, so earlier records compared
        another one; or another candidate took the version)."""
        cur = self.current
        if (
            cur is None
            or cur.version != version
            or cur.served_version != served_version
            or cur.candidate_digest != candidate_digest
        ):
            cur = ShadowReport(
                version, served_version, self.worker, candidate_digest=candidate_digest
            )
            self.reported_records = -1
        self.current = cur.added(sample)

    def to_report(self) -> ShadowReport | None:
        """The report if its totals changed since the last one (then marked reported)."""
        cur = self.current
        if cur is None or cur.totals.records == self.reported_records:
            return None
        self.reported_records = cur.totals.records
        return cur


class ShadowScorer:
    """Owns the candidate: installs or withdraws it, scores it, reports its totals."""

    def __init__(
        self,
        candidate: ModelHolder,
        metrics: WorkerMetrics,
        inference: Executor,
        events: EventSink,
        model_name: str,
        worker_id: str,
    ) -> None:
        self.candidate = candidate
        self.scores = ShadowScores(worker_id)
        self.metrics = metrics
        self.inference = inference
        self.events = events
        self.model_name = model_name
        self.worker_id = worker_id
        #: The last candidate's digest, computed once per candidate: (model, digest).
        self._digest: tuple[ModelParams, str] | None = None

    def digest_of(self, model: ModelParams) -> str:
        """The candidate's `model_digest` (computed once for each candidate)."""
        if self._digest is None or self._digest[0] is not model:
            self._digest = (model, model_digest(model))
        return self._digest[1]

    async def propose(self, model: ModelParams | None, served_version: int) -> None:
        """A new candidate to score, or None: the candidate was withdrawn (or a candidate no
        newer than the served model, which is withdrawn the same way)."""
        if model is None or model.version <= served_version:
            previous = self.candidate.current
            self.candidate.clear()
            self.scores.stop()
            self.metrics.candidate_version.set(math.nan)
            if previous is not None:
                self.metrics.forget_candidate(previous.model.version)
            return
        if await self.candidate.install(model):
            self.metrics.candidate_version.set(model.version)

    async def served_changed(self, model: ModelParams) -> None:
        """A served model at or past the candidate's version supersedes it (a promotion, a
        rollback)."""
        candidate = self.candidate.current
        if candidate is not None and candidate.model.version <= model.version:
            await self.propose(None, model.version)

    async def score(
        self, parsed: ParsedSlice, serving: ServingModel, served: Classification
    ) -> None:
        """The candidate's verdict on a slice the served model classified, counted."""
        candidate = self.candidate.current
        if candidate is None or candidate.model.mixture.dim != serving.model.mixture.dim:
            return
        loop = asyncio.get_running_loop()
        try:
            sample = await loop.run_in_executor(
                self.inference,
                lambda: compare(served, classify_slice(parsed, candidate)[0]),
            )
        except Exception:  # the candidate's problem, not the stream's
            log.exception("scoring candidate version %d failed", candidate.model.version)
            return
        if self.candidate.current is not candidate:
            # Withdrawn or replaced while it was scoring: its totals and series are gone, and
            # a late sample must not bring them back (nor be counted for another candidate).
            return
        version = candidate.model.version
        digest = self.digest_of(candidate.model)
        self.scores.add(version, serving.model.version, sample, digest)
        self.metrics.observe_shadow(version, sample)

    async def report(self, every_s: float) -> None:
        """Reports this worker's totals on the events topic whenever they changed."""
        while True:
            await asyncio.sleep(every_s)
            report = self.scores.to_report()
            if report is not None and self.events.enabled:
                self.events.send(report.to_event(self.model_name))
