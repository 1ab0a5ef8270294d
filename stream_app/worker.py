"""The worker's composition root: builds every part from the settings and wires them together.

    input topic --(PointSource: one getmany per batch; Checkpoint.fetched)--> batch channel
        --> Faust agent --> Worker.handle: one model per batch, slice by slice: validated and
            encoded on the event loop, classified (JAX) on the inference thread; each slice
            handed to Delivery as soon as it is encoded
        --> Delivery (KafkaSink) --> all slices acknowledged --> Checkpoint.delivered
        --> Checkpoint.run commits, in fetch order

The Faust agent, tasks and web views (stream_app.agents, stream_app.views) are thin functions
over one `Worker`. Nothing here runs at import time; `Worker(settings)` builds the parts and
starts nothing until the app's tasks call `feed` and `follow_params`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from kafka_common import params_topic
from kafka_common.events import Event, EventProducer
from kafka_common.signing import Verifier
from mixture.classify import Classification
from mixture.params import ModelParams
from stream_app.batch import BatchOutcome, ParsedSlice, classify_slice, encode_slice, parse_slice
from stream_app.checkpoint import Checkpoint
from stream_app.delivery import Delivery, DeliveryResult, KafkaSink
from stream_app.drift import DriftDetector
from stream_app.metrics import WorkerMetrics, observe_many
from stream_app.model_state import ModelHolder, ServingModel
from stream_app.monitor import ShadowSample, ShadowScores, compare
from stream_app.settings import WorkerSettings
from stream_app.source import InBatch, PointSource

log = logging.getLogger(__name__)

#: Batches fetched but not yet delivered; bounds memory when the broker is slow.
MAX_IN_FLIGHT = 4
#: How often the lag gauges are refreshed from the broker.
LAG_INTERVAL_S = 5.0


def _terminate(reason: str) -> None:
    """Stops the process as SIGTERM does: what was delivered in order is committed, no more."""
    os.kill(os.getpid(), signal.SIGTERM)


class Worker:
    """Owns the settings, metrics, model holder, executors, source, delivery and checkpoint."""

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics | None = None,
        terminate: Callable[[str], None] = _terminate,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics(settings.max_batch)
        self._terminate = terminate
        self.exit_code = 0
        # One thread does all classification, in order; another compiles new model layouts,
        # so a compilation never stalls the stream.
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="gmm-inference")
        self.compiler = ThreadPoolExecutor(1, thread_name_prefix="gmm-compile")
        self.holder = ModelHolder(
            settings.temperature,
            settings.max_batch,
            self.metrics,
            self.compiler,
            settings.classifier_sizes,
        )
        #: A candidate of the served name, scored in shadow beside it (never served).
        self.candidate = ModelHolder(
            settings.temperature,
            settings.max_batch,
            self.metrics,
            self.compiler,
            settings.classifier_sizes,
            served=False,
            classifiers=self.holder.classifiers,
        )
        self.shadow = ShadowScores()
        self.drift = (
            DriftDetector(
                threshold=settings.drift_threshold,
                warmup_blocks=settings.drift_warmup_blocks,
                block_records=settings.drift_block_records,
            )
            if settings.drift_threshold > 0
            else None
        )
        self.events = (
            EventProducer(settings.kafka, settings.events_topic) if settings.events_topic else None
        )
        #: Params records are used only if signed by one of these keys (GMM_PARAMS_VERIFY_KEY).
        self.verifier = (
            Verifier.from_files(settings.params_verify_key) if settings.params_verify_key else None
        )
        #: Names this process in its shadow reports (the trainer sums the workers' totals).
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.source = PointSource(
            settings.kafka,
            settings.input_topic,
            settings.group_id,
            settings.max_batch,
            settings.max_delay_ms / 1000,
            settings.session_timeout_s,
            self.metrics,
            # Revoke settles, then commits, each bounded by the revoke timeout.
            rebalance_timeout_s=2 * settings.revoke_timeout_s + 10,
            max_batch_bytes=settings.max_batch_bytes,
            max_key_bytes=settings.max_key_bytes,
        )
        self.sink = KafkaSink(settings.kafka, settings.output_topic, settings.dlq_topic)
        self.delivery = Delivery(self.sink, self.metrics)
        self.checkpoint = Checkpoint(self.source, self.metrics, on_fatal=self.halt)
        self.source.on_revoke = self._revoke
        self.metrics.delivery_stuck_seconds.set_function(self.delivery.stuck_seconds)
        self.metrics.commit_pending_seconds.set_function(self.checkpoint.pending_seconds)
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    def halt(self, reason: str) -> None:
        """Stops the worker uncommitted past the failure, with one clear line and exit code 1."""
        if self.exit_code == 0:
            self.exit_code = 1
            log.critical("stopping the worker: %s", reason)
            self._terminate(reason)

    async def _revoke(self, partitions: list) -> None:
        await self.checkpoint.revoke(partitions, self.settings.revoke_timeout_s)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- tasks -----------------------------------------------------------------------------

    async def follow_params(self) -> None:
        """Installs the newest model at start (file, then topic) and every newer one after."""
        model = self.settings.load_params_file()
        if model is not None:
            await self._install(model)
        while True:
            try:
                await params_topic.follow(
                    self.settings.kafka,
                    self.settings.params_topic,
                    self.settings.model_name,
                    self._install,
                    on_reject=lambda reason, _: self.metrics.params_rejected.labels(
                        reason=reason
                    ).inc(),
                    on_candidate=self._candidate,
                    verifier=self.verifier,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker outage or a missing topic: retry, keep serving
                log.warning("params topic: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _install(self, model: ModelParams) -> bool:
        installed = await self.holder.install(model)
        if installed and self.drift is not None:
            self.drift.reset()  # the baseline belongs to the model
            self.metrics.drift_statistic.set(0.0)
        candidate = self.candidate.current
        if installed and candidate is not None and candidate.model.version <= model.version:
            await self._candidate(None)  # superseded (a promotion, a rollback)
        return installed

    async def _candidate(self, model: ModelParams | None) -> None:
        """A new candidate to score in shadow, or None: the candidate was withdrawn."""
        if model is None or model.version <= self._served_version():
            previous = self.candidate.current
            self.candidate.clear()
            self.shadow.stop()
            self.metrics.candidate_version.set(math.nan)
            if previous is not None:
                self.metrics.forget_candidate(previous.model.version)
            return
        if await self.candidate.install(model):
            self.metrics.candidate_version.set(model.version)

    def _served_version(self) -> int:
        current = self.holder.current
        return current.model.version if current is not None else -1

    async def report_shadow(self) -> None:
        """Reports this worker's shadow totals on the events topic whenever they changed."""
        while True:
            await asyncio.sleep(self.settings.shadow_report_seconds)
            totals = self.shadow.to_report()
            if totals is None or self.events is None:
                continue
            self._send_event(
                Event.now(
                    "shadow",
                    self.settings.model_name,
                    totals.version,
                    totals.difference,
                    data={**totals.to_json(), "worker": self.worker_id},
                )
            )

    def _send_event(self, event: Event) -> None:
        if self.events is not None:
            self._spawn(self._send(event), f"gmm-event-{event.kind}")

    async def _send(self, event: Event) -> None:
        assert self.events is not None
        try:
            await self.events.send(event)
        except Exception as exc:  # an event is information: serving goes on without it
            self.metrics.events_errors.inc()
            log.warning("could not send a %s event: %s", event.kind, exc)

    async def feed(self, put: Callable[[InBatch], Awaitable[None]]) -> None:
        """Reads the input topic in micro-batches for the agent, once a model is being served."""
        await self.holder.ready.wait()  # no model, no consumption: records wait in Kafka
        # What exists now (JAX, NumPyro, Faust, the compiled classifier) lives as long as the
        # process: frozen, a full garbage collection no longer walks it, a 100-200 ms pause that
        # otherwise hit the stream every few seconds.
        gc.freeze()
        committer: asyncio.Task | None = None
        try:
            await self.sink.start()
            committer = self._spawn(self.checkpoint.run(), "gmm-commit")
            await self.source.start()
            while self.checkpoint.fatal is None:
                await self.checkpoint.room(MAX_IN_FLIGHT)
                if self.checkpoint.fatal is not None:
                    break
                batch = await self.source.next_batch()
                self.checkpoint.fetched(batch.number, batch.offsets)
                self.metrics.records_in.inc(len(batch.records))
                self.metrics.batch_size.observe(len(batch.records))
                await put(batch)
            await asyncio.Event().wait()  # halted: wait here for the stop
        finally:
            # A graceful stop finishes the batches already started, so the next owner need not
            # redo their first slices; then commits once, then closes, each step bounded.
            self._stopping = True
            timeout = self.settings.stop_timeout_s
            await self.checkpoint.stop(timeout)
            if committer is not None:
                committer.cancel()
            await self.source.stop()
            try:
                await asyncio.wait_for(self.sink.stop(), timeout)
            except TimeoutError:
                log.warning("the producer did not flush in %.0f s; closing anyway", timeout)
            if self.events is not None:
                await self.events.stop()

    async def watch_lag(self) -> None:
        """Refreshes the lag gauges on a timer, so a stalled stream shows a growing lag."""
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            try:
                await self.source.update_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: the next tick tries again
                log.debug("lag update failed: %s", exc)

    # -- one batch -------------------------------------------------------------------------

    async def handle(self, batch: InBatch) -> None:
        """Classifies one batch under one model, slice by slice, handing each slice to delivery.

        A slice's outputs leave while the next slice is classified: a record waits at most
        the batching delay plus one slice, not plus the whole batch. Never raises: a failure
        fails the batch in the checkpoint, which halts the worker uncommitted.
        """
        try:
            await self._handle(batch)
        except Exception as exc:
            log.exception("batch %d failed", batch.number)
            self.checkpoint.failed(batch.number, f"{type(exc).__name__}: {exc}")

    async def _handle(self, batch: InBatch) -> None:
        serving = self.holder.current
        assert serving is not None  # nothing is fed before `ready`
        self.checkpoint.started(batch.number)
        loop = asyncio.get_running_loop()
        size = self.settings.slice_size
        slices = []
        s = self.settings
        for start in range(0, len(batch.records), size):
            records = batch.records[start : start + size]
            parsed = parse_slice(
                records,
                serving.model.mixture.dim,
                s.max_record_bytes,
                serving.classifier.temperature,
                s.seed,
                s.dlq_payload_bytes,
            )
            result, seconds = None, 0.0
            if parsed.valid:
                result, seconds = await loop.run_in_executor(
                    self.inference, self._classify, parsed, serving
                )
            outcome = encode_slice(
                parsed,
                result,
                serving.model.version,
                seconds,
                s.dlq_payload_bytes,
                s.max_output_bytes,
                s.model_name,
            )
            slices.append(self._spawn(self._deliver(outcome), f"gmm-deliver-{batch.number}"))
            candidate = self.candidate.current
            if candidate is not None and result is not None:
                # After the slice's outputs left: the candidate never delays serving.
                await self._score_in_shadow(parsed, serving, candidate, result)
        self._spawn(self._settle(batch.number, slices), f"gmm-settle-{batch.number}")

    def _classify(self, parsed: ParsedSlice, serving: ServingModel) -> tuple[Classification, float]:
        return classify_slice(parsed, serving)

    async def _score_in_shadow(
        self,
        parsed: ParsedSlice,
        serving: ServingModel,
        candidate: ServingModel,
        served: Classification,
    ) -> None:
        """The candidate's verdict on the same slice, compared and counted, never emitted."""
        if candidate.model.mixture.dim != serving.model.mixture.dim:
            return
        loop = asyncio.get_running_loop()
        try:
            sample: ShadowSample = await loop.run_in_executor(
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
        self.shadow.add(version, serving.model.version, sample)
        self.metrics.observe_shadow(version, sample)

    async def _deliver(self, outcome: BatchOutcome) -> None:
        result = await self.delivery.deliver(outcome.outputs)
        try:
            self._observe(outcome, result)
        except Exception:  # metrics only: the outputs are delivered, the batch goes on
            log.exception("observing a delivered slice failed")

    async def _settle(self, number: int, slices: list[asyncio.Task]) -> None:
        try:
            await asyncio.gather(*slices)
        except BaseException as exc:  # DeliveryFatal, a bug, a cancellation: never committed
            for task in slices:
                task.cancel()
            if isinstance(exc, asyncio.CancelledError) and self._stopping:
                raise  # the process is closing: the batch is read again at the restart
            self.checkpoint.failed(number, f"delivery failed: {type(exc).__name__}: {exc}")
            return
        self.checkpoint.delivered(number)
        self.holder.count_compilations()

    def _observe(self, outcome: BatchOutcome, result: DeliveryResult) -> None:
        m = self.metrics
        components = outcome.components
        replaced = {id(original) for original, _ in result.replaced}
        if replaced:  # rare: the broker refused outputs that delivery then replaced
            components = np.array(
                [o.component for o in outcome.assignments if id(o) not in replaced], np.int32
            )
            m.deadlettered.labels(reason="output_too_large").inc(len(replaced))
        if outcome.assignments:
            m.inference_seconds.observe(outcome.inference_seconds)
            m.observe_log_likelihood(outcome.log_likelihood_sum, len(outcome.assignments))
            self._watch_drift(outcome)
            values, counts = np.unique(components, return_counts=True)
            for component, count in zip(values.tolist(), counts.tolist(), strict=True):
                m.assignments_out.labels(component=str(component)).inc(count)
            times = outcome.input_times[~np.isnan(outcome.input_times)]
            observe_many(m.end_to_end_seconds, np.maximum(0.0, time.time() - times))
        for out in outcome.dead_letters:
            if id(out) not in replaced:
                m.deadlettered.labels(reason=out.reason or "unknown").inc()

    def _watch_drift(self, outcome: BatchOutcome) -> None:
        if self.drift is None or outcome.model_version != self._served_version():
            return  # a slice of the previous model, delivered after a swap
        n = len(outcome.assignments)
        alarm = self.drift.update(outcome.log_likelihood_sum / n, n)
        self.metrics.drift_statistic.set(self.drift.statistic)
        if alarm is None:
            return
        self.metrics.drift_alarms.inc()
        log.warning(
            "drift: mean log p(x) %.4f vs the baseline %.4f of model version %d (statistic %.1f)",
            alarm.current,
            alarm.baseline,
            outcome.model_version,
            alarm.statistic,
        )
        self._send_event(
            Event.now(
                "drift",
                self.settings.model_name,
                outcome.model_version,
                alarm.statistic,
                detail=f"mean log p(x) {alarm.current:.4f} vs baseline {alarm.baseline:.4f}",
                data={
                    "records": alarm.records,
                    "baseline": alarm.baseline,
                    "current": alarm.current,
                    "worker": self.worker_id,
                },
            )
        )

    # -- status ----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for /ready: a model is served and delivery and commits progress."""
        current = self.holder.current
        if current is None:
            return False, {"ready": False, "reason": "no model yet"}
        details: dict[str, Any] = {
            "model": self.settings.model_name,
            "model_version": current.model.version,
            "compiled_sizes": list(current.classifier.sizes),
            "compilations": current.classifier.compilations,
        }
        limit = self.settings.delivery_stuck_s
        reason = None
        if self.checkpoint.fatal is not None:
            reason = f"halted: {self.checkpoint.fatal}"
        elif (stuck := self.delivery.stuck_seconds()) > limit:
            reason = f"delivery stuck for {stuck:.0f} s: {self.delivery.last_error or 'no ack'}"
        elif (pending := self.checkpoint.pending_seconds()) > limit:
            reason = f"offset commits failing for {pending:.0f} s"
        elif (unsettled := self.checkpoint.unsettled_seconds()) > 2 * limit:
            # Twice the limit: a batch whose delivery is stuck is reported as such first (its
            # delivery starts a slice after its fetch); this catches one that never settles.
            reason = f"a batch has been in flight for {unsettled:.0f} s"
        if reason is not None:
            return False, {"ready": False, "reason": reason, **details}
        return True, {"ready": True, **details}
