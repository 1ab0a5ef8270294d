"""Shadow scoring: a candidate model of the served name, scored on the same slices as the served
model and never emitted.

The candidate (a params record marked as a candidate, `gmm-trainer models --shadow`) is compiled
beside the served model; after each slice's outputs have left, the candidate classifies the same
points on the inference thread and the two verdicts are compared (`monitor.compare`). Totals per
candidate are reported on the events topic every `GMM_SHADOW_REPORT_SECONDS` when they changed;
the trainer sums the workers' reports to decide a promotion. A candidate never delays serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import Executor

from kafka_common.events import Event
from mixture.classify import Classification
from mixture.params import ModelParams
from stream_app.batch import ParsedSlice, classify_slice
from stream_app.event_sink import EventSink
from stream_app.metrics import WorkerMetrics
from stream_app.model_state import ModelHolder, ServingModel
from stream_app.monitor import ShadowScores, compare

log = logging.getLogger(__name__)


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
        self.scores = ShadowScores()
        self.metrics = metrics
        self.inference = inference
        self.events = events
        self.model_name = model_name
        self.worker_id = worker_id

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
        self.scores.add(version, serving.model.version, sample)
        self.metrics.observe_shadow(version, sample)

    async def report(self, every_s: float) -> None:
        """Reports this worker's totals on the events topic whenever they changed."""
        while True:
            await asyncio.sleep(every_s)
            totals = self.scores.to_report()
            if totals is None or not self.events.enabled:
                continue
            self.events.send(
                Event.now(
                    "shadow",
                    self.model_name,
                    totals.version,
                    totals.difference,
                    data={**totals.to_json(), "worker": self.worker_id},
                )
            )
