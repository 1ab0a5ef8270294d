"""The worker's agent and tasks: feed micro-batches, classify them, settle them; follow params.

    input topic --(PointSource: one getmany per batch)--> `point_batches` channel
        --> classify_batches agent (inference thread, then queue the outputs)
        --> settle loop (wait for the broker, then commit the batch's offsets)

Delivery is at least once: a batch's offsets are committed only after every output of the batch
(assignments and dead letters) is acknowledged by the broker, and batches settle in the order
they were fetched, so no commit passes a record still in flight. Classifying batch n+1 overlaps
the delivery of batch n.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pathlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np

from kafka_common import params_topic
from mixture.params import ModelParams
from stream_app.app import app, metrics, settings
from stream_app.batch import BatchOutcome, InRecord, process_batch
from stream_app.delivery import Delivery
from stream_app.metrics import observe_many
from stream_app.model_state import ModelHolder
from stream_app.source import InBatch, PointSource
from stream_app.topics import batches_channel

log = logging.getLogger(__name__)

#: Batches classified but not yet delivered; bounds memory when the broker is slow.
MAX_UNSETTLED = 4
#: Records classified and sent at a time within a batch (one of the classifier's padded sizes).
SLICE = 256
#: How long a stopping worker waits for the broker to acknowledge what it already sent.
SETTLE_ON_STOP_S = 5.0

#: One thread does all JAX work, off the event loop, in order.
inference_executor = ThreadPoolExecutor(1, thread_name_prefix="gmm-inference")
holder = ModelHolder(settings.temperature, settings.max_batch, metrics, inference_executor)
delivery = Delivery(settings.kafka)
source = PointSource(
    settings.kafka,
    settings.input_topic,
    settings.group_id,
    settings.max_batch,
    settings.max_delay_ms / 1000,
    settings.session_timeout_s,
    metrics,
)
#: In memory: one event per micro-batch (an InBatch), from the feeder to the agent.
point_batches = batches_channel(app)
_base_key = jax.random.PRNGKey(settings.seed)


class _Slice(NamedTuple):
    outcome: BatchOutcome
    sent: list[asyncio.Future]  # resolve when the broker has the outputs


class _Unsettled(NamedTuple):
    batch: InBatch
    slices: list[_Slice]


_unsettled: asyncio.Queue[_Unsettled] | None = None


def _reject(reason: str, message: str) -> None:
    metrics.params_rejected.labels(reason=reason).inc()


@app.task
async def follow_params() -> None:
    """Installs the newest model at start (file, then topic) and every newer one after."""
    if settings.params_file:
        model = ModelParams.loads(pathlib.Path(settings.params_file).read_bytes())
        await holder.install(model)
    while True:
        try:
            await params_topic.follow(
                settings.kafka, settings.params_topic, holder.install, on_reject=_reject
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broker outage or a missing topic: retry, keep serving
            log.warning("params topic: %s; retrying in 1 s", exc)
            await asyncio.sleep(1.0)


@app.task
async def feed_points() -> None:
    """Reads the input topic in micro-batches for the agent, once a model is being served."""
    global _unsettled
    await holder.ready.wait()  # no model, no consumption: records wait in Kafka
    # What exists now (JAX, NumPyro, Faust, the compiled classifier) lives as long as the
    # process: frozen, a full garbage collection no longer walks it, a 100-200 ms pause that
    # otherwise hit the stream every few seconds.
    gc.freeze()
    _unsettled = asyncio.Queue(MAX_UNSETTLED)
    await delivery.start()
    settler = asyncio.create_task(_settle_loop(_unsettled), name="gmm-settle")
    await source.start()
    try:
        while True:
            batch = await source.next_batch()
            metrics.records_in.inc(len(batch.records))
            metrics.batch_size.observe(len(batch.records))
            await point_batches.put_batch(batch)  # see BatchChannel: never dropped
    finally:
        # A graceful stop settles what was already sent, so the next owner need not redo it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_unsettled.join(), SETTLE_ON_STOP_S)
        settler.cancel()
        await source.stop()
        await delivery.stop()


@app.agent(point_batches, concurrency=1)
async def classify_batches(batches: Any) -> None:
    """Classifies each micro-batch in the inference thread, slice by slice, and sends it on.

    A batch larger than SLICE records is classified and sent a slice at a time, oldest records
    first, so its first outputs leave while the rest is being classified: a record then waits
    at most the batching delay plus one slice, not plus the whole batch.
    """
    loop = asyncio.get_running_loop()
    async for batch in batches:
        assert _unsettled is not None
        slices = []
        for i, start in enumerate(range(0, len(batch.records), SLICE)):
            records = batch.records[start : start + SLICE]
            try:
                outcome = await loop.run_in_executor(
                    inference_executor, _classify, records, batch.number, i
                )
            except Exception:
                # Its offsets must not be passed by a later batch's commit: stop the worker;
                # the batch is read again at the restart.
                log.exception("classifying batch %d failed", batch.number)
                _stop_worker()
                return
            sent = await delivery.send_outcome(outcome, settings.output_topic, settings.dlq_topic)
            slices.append(_Slice(outcome, sent))
        await _unsettled.put(_Unsettled(batch, slices))


def _stop_worker() -> None:
    """Stops the worker as SIGTERM does: what was delivered in order is committed, no more."""
    log.critical("stopping the worker: a batch could not be handled")
    os.kill(os.getpid(), signal.SIGTERM)


def _classify(records: list[InRecord], batch_number: int, slice_number: int) -> BatchOutcome:
    serving = holder.current
    assert serving is not None  # nothing is fed before `ready`
    key = None
    if settings.temperature == 1:  # a fresh key per slice of every batch
        key = jax.random.fold_in(jax.random.fold_in(_base_key, batch_number), slice_number)
    return process_batch(records, serving, settings.max_record_bytes, key)


async def _settle_loop(queue: asyncio.Queue[_Unsettled]) -> None:
    """In fetch order: wait until the broker has a batch's outputs, then let it be committed."""
    expected = 0
    while True:
        item = await queue.get()
        if item.batch.number != expected:
            # A batch went missing between the feeder and here: committing on would pass its
            # records. Stop uncommitted; they are read again at the restart.
            log.error("batch %d arrived, %d expected", item.batch.number, expected)
            _stop_worker()
            return
        expected += 1
        for part in item.slices:
            await _delivered(item.batch.number, part)
        await source.delivered(item.batch)
        for part in item.slices:
            _observe(part.outcome)
        queue.task_done()


async def _delivered(batch_number: int, part: _Slice) -> None:
    sent, delay = part.sent, 0.1
    while True:
        try:
            await asyncio.gather(*sent)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not delivered, so not committed: send the outputs again
            log.warning(
                "delivering batch %d failed (%s); retrying in %.1f s", batch_number, exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                sent = await delivery.send_outcome(
                    part.outcome, settings.output_topic, settings.dlq_topic
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc2:
                log.warning("re-sending batch %d failed: %s", batch_number, exc2)


def _observe(outcome: BatchOutcome) -> None:
    now = time.time()
    if outcome.assignments:
        metrics.inference_seconds.observe(outcome.inference_seconds)
        metrics.observe_log_likelihood(outcome.log_likelihood_sum, len(outcome.assignments))
        for component, count in zip(*_counts(outcome.components), strict=True):
            metrics.assignments_out.labels(component=str(component)).inc(count)
        times = outcome.input_times[~np.isnan(outcome.input_times)]
        observe_many(metrics.end_to_end_seconds, np.maximum(0.0, now - times))
    for reason in outcome.reasons:
        metrics.deadlettered.labels(reason=reason).inc()
    holder.count_compilations()


def _counts(components: Any) -> tuple[list[int], list[int]]:
    values, counts = np.unique(components, return_counts=True)
    return values.tolist(), counts.tolist()
