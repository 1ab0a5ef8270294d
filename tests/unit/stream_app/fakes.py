"""In-memory fakes of the worker's edges (the input consumer, the output sink) for unit tests.

The integration tests run the same protocol against the real broker; these let every failure
be scripted exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from aiokafka import TopicPartition

from stream_app.batch import BatchOutcome, classify_slice, encode_slice, parse_slice
from stream_app.model_state import ServingModel
from stream_app.records import InRecord, Outgoing

TP0 = TopicPartition("points", 0)
TP1 = TopicPartition("points", 1)


def output(i: int, *, dead: bool = False, size: int = 10) -> Outgoing:
    source = {"topic": "points", "partition": 0, "offset": i}
    reason = "not_json" if dead else None
    return Outgoing(
        f"k{i}".encode(), b"v" * size, None, 0, dead, source, reason, -1 if dead else i % 2
    )


class FakeCommitter:
    """Records commits; `fail` decides, per attempt, whether a commit raises."""

    def __init__(self, assigned: Sequence[TopicPartition] = (TP0, TP1)) -> None:
        self.assigned = set(assigned)
        self.commits: list[dict[TopicPartition, int]] = []
        self.attempts = 0
        self.fail: Callable[[int], BaseException | None] = lambda attempt: None

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.attempts += 1
        error = self.fail(self.attempts)
        if error is not None:
            raise error
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    @property
    def last(self) -> dict[TopicPartition, int]:
        merged: dict[TopicPartition, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged


class FakeSink:
    """Acknowledges or fails record batches as `decide(batch, attempt)` says.

    `decide` returns None (acknowledged), an exception (the batch's future fails with it), or
    an asyncio.Future the batch's future waits on. `batch_size` outputs go in one record batch.
    """

    def __init__(self, batch_size: int = 4) -> None:
        self.generation = 0
        self.resets = 0
        self.batch_size = batch_size
        self.sends: list[list[Outgoing]] = []  # every record batch queued
        self.acked: list[Outgoing] = []  # every output the "broker" has
        self.decide: Callable[[list[Outgoing], int], object] = lambda batch, attempt: None
        self.send_error: BaseException | None = None  # raised by send() itself, once

    async def send(
        self, outputs: Sequence[Outgoing], alone: bool = False
    ) -> list[tuple[asyncio.Future, list[Outgoing]]]:
        if self.send_error is not None:
            error, self.send_error = self.send_error, None
            raise error
        size = 1 if alone else self.batch_size
        parts = []
        for start in range(0, len(outputs), size):
            batch = list(outputs[start : start + size])
            self.sends.append(batch)
            parts.append((self._future(batch, len(self.sends)), batch))
        return parts

    def _future(self, batch: list[Outgoing], attempt: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        verdict = self.decide(batch, attempt)
        if isinstance(verdict, BaseException):
            future.set_exception(verdict)
        elif isinstance(verdict, asyncio.Future):

            def done(v: asyncio.Future) -> None:
                if v.exception() is not None:
                    future.set_exception(v.exception())  # type: ignore[arg-type]
                else:
                    self.acked.extend(batch)
                    future.set_result(None)

            verdict.add_done_callback(done)
        else:
            self.acked.extend(batch)
            future.set_result(None)
        return future

    async def reset(self, generation: int) -> None:
        if generation == self.generation:
            self.generation += 1
            self.resets += 1


def process_batch(
    records: list[InRecord],
    serving: ServingModel,
    max_record_bytes: int,
    seed: int | None = None,
    dlq_payload_bytes: int = 4096,
    max_output_bytes: int = 1_000_000,
) -> BatchOutcome:
    """The record path's three steps on one slice, in one call (as RecordPath runs them)."""
    parsed = parse_slice(
        records,
        serving.model.mixture.dim,
        max_record_bytes,
        serving.classifier.temperature,
        seed,
        dlq_payload_bytes,
    )
    result, seconds = classify_slice(parsed, serving) if parsed.valid else (None, 0.0)
    return encode_slice(
        parsed, result, serving.model.version, seconds, dlq_payload_bytes, max_output_bytes
    )


def reasons(outcome: BatchOutcome) -> list[str]:
    """Each dead letter's reason, in order."""
    return [o.reason or "" for o in outcome.dead_letters]
