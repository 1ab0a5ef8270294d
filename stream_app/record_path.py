"""A record's path through the worker, top to bottom:

    PointSource.next_batch   one getmany per micro-batch           (source.py)
    Checkpoint.fetched       the batch's offsets, in fetch order    (checkpoint.py)
    -> the Faust agent -> RecordPath.handle, slice by slice, under one model:
        parse_slice          validate on the event loop             (batch.py)
        classify_slice       JAX, on the inference thread           (batch.py)
        encode_slice         assignments and dead letters           (batch.py, wire/)
        Delivery.deliver     acknowledged by the broker             (delivery.py)
        ShadowScorer.score   the candidate, after the outputs left  (shadow.py)
    Checkpoint.delivered     once every slice of the batch is acknowledged
    Checkpoint.run           commits, in fetch order                (checkpoint.py)

A slice's outputs leave while the next slice is classified: a record waits at most the
batching delay plus one slice, not the whole batch. Nothing is committed before its outputs are
acknowledged, and a failure halts the worker uncommitted past it (at least once, in order).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from mixture.classify import Classification
from stream_app.batch import BatchOutcome, ParsedSlice, classify_slice, encode_slice, parse_slice
from stream_app.checkpoint import Checkpoint
from stream_app.delivery import Delivery, DeliveryResult, KafkaSink
from stream_app.metrics import WorkerMetrics, observe_many
from stream_app.model_state import ModelHolder, ServingModel
from stream_app.settings import WorkerSettings
from stream_app.source import InBatch, PointSource

log = logging.getLogger(__name__)

#: Batches fetched but not yet delivered; bounds memory when the broker is slow.
MAX_IN_FLIGHT = 4

#: Called with each classified slice (after its outputs were handed to delivery).
SliceHook = Callable[[ParsedSlice, ServingModel, Classification], Awaitable[None]]
#: Called with each delivered slice.
DeliveredHook = Callable[[BatchOutcome], None]


class RecordPath:
    """Fetches, classifies, delivers and commits micro-batches under the holder's model."""

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        holder: ModelHolder,
        source: PointSource,
        sink: KafkaSink,
        delivery: Delivery,
        checkpoint: Checkpoint,
        inference: Executor,
        after_slice: SliceHook | None = None,
        on_delivered: DeliveredHook | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.holder = holder
        self.source = source
        self.sink = sink
        self.delivery = delivery
        self.checkpoint = checkpoint
        self.inference = inference
        self.after_slice = after_slice
        self.on_delivered = on_delivered
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def feed(self, put: Callable[[InBatch], Awaitable[None]]) -> None:
        """Reads the input topic in micro-batches and hands each to `put` (the agent's channel),
        at most MAX_IN_FLIGHT undelivered; on stop, finishes what started, commits, closes."""
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

    async def handle(self, batch: InBatch) -> None:
        """Classifies one batch under one model, slice by slice, handing each slice to delivery.

        Never raises: a failure fails the batch in the checkpoint, which halts the worker
        uncommitted.
        """
        try:
            await self._handle(batch)
        except Exception as exc:
            log.exception("batch %d failed", batch.number)
            self.checkpoint.failed(batch.number, f"{type(exc).__name__}: {exc}")

    async def _handle(self, batch: InBatch) -> None:
        serving = self.holder.current  # one model for the whole batch
        assert serving is not None  # nothing is fed before the first model
        self.checkpoint.started(batch.number)
        loop = asyncio.get_running_loop()
        s = self.settings
        slices = []
        for start in range(0, len(batch.records), s.slice_size):
            parsed = parse_slice(
                batch.records[start : start + s.slice_size],
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
            if self.after_slice is not None and result is not None:
                await self.after_slice(parsed, serving, result)
        self._spawn(self._settle(batch.number, slices), f"gmm-settle-{batch.number}")

    def _classify(self, parsed: ParsedSlice, serving: ServingModel) -> tuple[Classification, float]:
        return classify_slice(parsed, serving)

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
            if self.on_delivered is not None:
                self.on_delivered(outcome)
            values, counts = np.unique(components, return_counts=True)
            for component, count in zip(values.tolist(), counts.tolist(), strict=True):
                m.assignments_out.labels(component=str(component)).inc(count)
            times = outcome.input_times[~np.isnan(outcome.input_times)]
            observe_many(m.end_to_end_seconds, np.maximum(0.0, time.time() - times))
        for out in outcome.dead_letters:
            if id(out) not in replaced:
                m.deadlettered.labels(reason=out.reason or "unknown").inc()
