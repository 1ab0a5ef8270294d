"""The worker's agents: classify micro-batches of points, and follow the params topic.

Delivery is at least once: a batch's events are acknowledged only after every output of the
batch (assignments and dead letters) is delivered. `noack_take` leaves acknowledgement to us
(faust's `take()` acks in a `finally`, even when handling failed), and the agent runs with
concurrency 1 so no commit can pass a record still in flight (faust-streaming #606).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from kafka_common import params_topic
from mixture.params import ModelParams
from stream_app.app import app, metrics, settings
from stream_app.batch import BatchOutcome, InRecord, process_batch
from stream_app.delivery import Delivery
from stream_app.model_state import ModelHolder
from stream_app.topics import points_topic

log = logging.getLogger(__name__)

#: One thread does all JAX work, off the event loop, in order.
inference_executor = ThreadPoolExecutor(1, thread_name_prefix="gmm-inference")
holder = ModelHolder(settings.temperature, settings.max_batch, metrics, inference_executor)
delivery = Delivery(settings.kafka)
_base_key = jax.random.PRNGKey(settings.seed)


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


def _classify(records: list[InRecord], batch_no: int) -> BatchOutcome:
    serving = holder.current
    assert serving is not None  # the agent waits for `ready`
    key = jax.random.fold_in(_base_key, batch_no) if settings.temperature == 1 else None
    return process_batch(records, serving, settings.max_record_bytes, key)


async def _deliver(outcome: BatchOutcome) -> None:
    """Sends every output of the batch and waits until the broker has each one."""
    producer = app.producer
    pending = []
    for out in outcome.assignments:
        pending.append(
            await producer.send(settings.output_topic, out.key, out.value, None, None, None)
        )
    for out in outcome.dead_letters:
        pending.append(
            await producer.send(settings.dlq_topic, out.key, out.value, None, None, None)
        )
    await asyncio.gather(*pending)


def _record(event: Any) -> InRecord:
    m = event.message
    return InRecord(m.key, m.value, m.topic, m.partition, m.offset, m.timestamp)


@app.agent(points_topic(app, settings), concurrency=1)
async def classify_points(stream: Any) -> None:
    await holder.ready.wait()  # no model, no consumption: records wait in Kafka
    await delivery.start()
    try:
        await _classify_stream(stream)
    finally:
        await delivery.stop()


async def _classify_stream(stream: Any) -> None:
    loop = asyncio.get_running_loop()
    batch_no = 0
    async for events in stream.noack_take(settings.max_batch, within=settings.max_delay_ms / 1000):
        records = [_record(e) for e in events]
        metrics.records_in.inc(len(records))
        metrics.batch_size.observe(len(records))
        outcome = await loop.run_in_executor(inference_executor, _classify, records, batch_no)
        batch_no += 1
        delay = 0.1
        while True:
            try:
                await _deliver(outcome)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not delivered, so not acked: send the batch again
                log.warning(
                    "delivering batch %d failed (%s); retrying in %.1f s", batch_no, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for event in events:
            await stream.ack(event)
        _observe(outcome)


def _observe(outcome: BatchOutcome) -> None:
    now = time.time()
    if outcome.assignments:
        metrics.inference_seconds.observe(outcome.inference_seconds)
        metrics.observe_log_likelihood(outcome.log_likelihood_sum, len(outcome.assignments))
        for component, count in zip(*_counts(outcome.components), strict=True):
            metrics.assignments_out.labels(component=str(component)).inc(count)
        for out in outcome.assignments:
            if out.ts_in is not None:
                metrics.end_to_end_seconds.observe(max(0.0, now - out.ts_in))
    for reason in outcome.reasons:
        metrics.deadlettered.labels(reason=reason).inc()
    holder.count_compilations()


def _counts(components: Any) -> tuple[list[int], list[int]]:
    values, counts = np.unique(components, return_counts=True)
    return values.tolist(), counts.tolist()
