"""Delivery's outcomes for every kind of failed send, on an in-memory sink."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)

from kafka_common.errors import classify_error
from stream_app.delivery import Delivery, DeliveryFatal
from tests.unit.stream_app.fakes import FakeSink, output


def make(sink: FakeSink) -> Delivery:
    return Delivery(sink, backoff=(0.001, 0.004))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (KafkaTimeoutError(), "retriable"),
        (NotLeaderForPartitionError(), "retriable"),
        (MessageSizeTooLargeError(), "rejected"),
        (TopicAuthorizationFailedError(), "fatal"),
        (RuntimeError("producer closed"), "retriable"),
    ],
)
def test_classify_error(error, kind):
    assert classify_error(error) == kind


async def test_a_send_that_fails_once_resends_only_the_failed_outputs():
    sink = FakeSink(batch_size=2)
    outs = [output(i) for i in range(6)]
    sink.decide = lambda batch, attempt: KafkaTimeoutError() if attempt == 2 else None
    await make(sink).deliver(outs)
    assert sorted(o.source["offset"] for o in sink.acked) == list(range(6))  # each once
    assert [[o.source["offset"] for o in b] for b in sink.sends] == [[0, 1], [2, 3], [4, 5], [2, 3]]
    assert sink.resets == 0  # retriable: the producer keeps its session


async def test_a_send_that_keeps_failing_backs_off_reports_stuck_then_delivers():
    sink = FakeSink()
    gate: asyncio.Future = asyncio.get_running_loop().create_future()
    sink.decide = lambda batch, attempt: KafkaTimeoutError() if not gate.done() else None
    delivery = make(sink)
    task = asyncio.create_task(delivery.deliver([output(0), output(1)]))
    for _ in range(5000):  # at most 5 s
        await asyncio.sleep(0.001)
        if len(sink.sends) >= 3 and delivery.stuck_seconds() > 0.05:
            break
    assert not task.done() and len(sink.sends) >= 3  # retried, with back-off
    assert delivery.stuck_seconds() > 0.05
    assert "KafkaTimeoutError" in (delivery.last_error or "")
    gate.set_result(None)
    await asyncio.wait_for(task, 5)
    assert [o.source["offset"] for o in sink.acked] == [0, 1]
    assert delivery.stuck_seconds() == 0.0


async def test_a_send_that_raises_is_retried():
    sink = FakeSink()
    sink.send_error = KafkaTimeoutError("no metadata")
    await make(sink).deliver([output(0)])
    assert [o.source["offset"] for o in sink.acked] == [0]


async def test_a_refused_output_is_split_out_and_replaced_by_a_small_dead_letter():
    sink = FakeSink(batch_size=4)
    outs = [output(0), output(1, size=5000), output(2), output(3, dead=True)]
    sink.decide = lambda batch, attempt: (
        MessageSizeTooLargeError() if any(len(o.value) > 1000 for o in batch) else None
    )
    result = await make(sink).deliver(outs)
    acked = sorted(sink.acked, key=lambda o: o.source["offset"])
    assert [o.source["offset"] for o in acked] == [0, 1, 2, 3]  # every input answered once
    assert [o.reason for o in acked] == [None, "output_too_large", None, "not_json"]
    letter = json.loads(acked[1].value)
    assert letter["reason"] == "output_too_large" and letter["payload_size"] == 5000
    assert letter["source"] == {"topic": "points", "partition": 0, "offset": 1}
    assert len(acked[1].value) < 1000
    assert [(a.source["offset"], b.reason) for a, b in result.replaced] == [(1, "output_too_large")]
    assert sink.resets == 2  # a fresh producer session after each refusal
    assert max(len(b) for b in sink.sends[1:]) == 1  # after the refusal, one per batch


async def test_a_refused_dead_letter_keeps_its_original_reason():
    sink = FakeSink()
    big = output(7, dead=True, size=5000)
    sink.decide = lambda batch, attempt: (
        MessageSizeTooLargeError() if len(batch[0].value) > 1000 else None
    )
    await make(sink).deliver([big])
    letter = json.loads(sink.acked[0].value)
    assert letter["reason"] == "output_too_large" and letter["original_reason"] == "not_json"


async def test_a_refused_stand_in_is_fatal_not_a_loop():
    sink = FakeSink()
    sink.decide = lambda batch, attempt: MessageSizeTooLargeError()
    with pytest.raises(DeliveryFatal, match="refused even"):
        await make(sink).deliver([output(0)])
    assert len(sink.sends) == 2  # the output, then its stand-in: no more


async def test_not_authorized_is_fatal():
    sink = FakeSink()
    sink.decide = lambda batch, attempt: TopicAuthorizationFailedError("gmm.assignments")
    with pytest.raises(DeliveryFatal, match="TopicAuthorizationFailedError"):
        await make(sink).deliver([output(0)])
    assert len(sink.sends) == 1


async def test_an_invalid_record_refusal_is_rejected_not_retried_forever():
    from aiokafka.errors import for_code

    sink = FakeSink()
    sink.decide = lambda batch, attempt: for_code(87)() if not batch[0].dead_letter else None
    await make(sink).deliver([output(0)])
    letter = json.loads(sink.acked[0].value)
    assert letter["reason"] == "output_rejected"
    assert len(sink.sends) == 2 and sink.resets == 1


async def test_a_session_refusal_gets_a_fresh_producer_and_the_same_outputs_again():
    from aiokafka.errors import OutOfOrderSequenceNumber

    sink = FakeSink()
    sink.decide = lambda batch, attempt: OutOfOrderSequenceNumber() if attempt == 1 else None
    await make(sink).deliver([output(0), output(1)])
    assert [o.source["offset"] for o in sink.acked] == [0, 1] and sink.resets == 1


async def test_a_producer_that_fails_silently_is_replaced():
    sink = FakeSink()
    sink.decide = lambda batch, attempt: RuntimeError("sender died") if sink.resets == 0 else None
    await make(sink).deliver([output(0)])
    assert sink.resets == 1 and len(sink.sends) == 4  # three silent rounds, then a new producer


class _Builder:
    def __init__(self) -> None:
        self.records: list[bytes] = []

    def append(self, *, key, value, timestamp):
        if len(self.records) == 2:
            return None  # full
        self.records.append(value)
        return self

    def close(self) -> None:
        pass


class _Producer:
    """Enough of AIOKafkaProducer for KafkaSink.send: the third send_batch raises."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[bytes]]] = []

    async def partitions_for(self, topic):
        return {0, 1}

    def create_batch(self):
        return _Builder()

    async def send_batch(self, batch, topic, *, partition):
        if len(self.batches) == 2:
            raise KafkaTimeoutError("producer closing")
        self.batches.append((partition, batch.records))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_kafka_sink_fails_only_the_outputs_it_could_not_queue():
    from stream_app.delivery import KafkaSink
    from stream_app.settings import WorkerSettings

    sink = KafkaSink(WorkerSettings().kafka, "out", "dlq")
    sink.producer = _Producer()  # type: ignore[assignment]
    outs = [output(i)._replace(partition=i % 2, value=b"v%d" % i) for i in range(8)]
    parts = await sink.send(outs)
    queued = [o for future, members in parts if future.exception() is None for o in members]
    failed = [o for future, members in parts if future.exception() is not None for o in members]
    # Partition 0 went out in two batches; partition 1's first batch failed to queue.
    assert sorted(o.source["offset"] for o in queued) == [0, 2, 4, 6]
    assert sorted(o.source["offset"] for o in failed) == [1, 3, 5, 7]  # each exactly once
    assert len(queued) + len(failed) == 8


@pytest.mark.parametrize("error", [KafkaTimeoutError, MessageSizeTooLargeError])
async def test_a_failed_send_leaves_no_cycle_holding_the_slices_outputs(error):
    """The worker collects garbage rarely while it streams: a failed send must not leave the
    delivering frame (and through it every output of the slice) in a reference cycle."""
    sink = FakeSink(batch_size=2)
    sink.decide = lambda batch, attempt: error() if attempt == 1 else None
    gc.collect()
    gc.disable()
    try:
        await make(sink).deliver([output(i) for i in range(4)])
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        held = [o for o in gc.garbage if inspect.isframe(o) and o.f_code.co_name == "_deliver"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert sorted(o.source["offset"] for o in sink.acked) == [0, 1, 2, 3]
    assert held == []
