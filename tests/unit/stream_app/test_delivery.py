"""Delivery's outcomes for every kind of failed send, on an in-memory sink."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)

from stream_app.delivery import Delivery, DeliveryFatal, classify_error
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
    await asyncio.sleep(0.1)
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
