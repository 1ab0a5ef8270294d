"""Delivering outputs: every output acknowledged by the broker once, whatever fails on the way.

`KafkaSink` sends outputs as aiokafka record batches on their input's partition (modulo the
topic's partition count), as Kafka Streams does for co-partitioned topics. Its producer is
idempotent with acks=all: aiokafka itself retries retriable errors without duplicating, and
never gives up on them (with idempotence, batches do not expire).

`Delivery.deliver` owns what happens when a send fails (see `classify_error`):
- retriable (no metadata yet, a producer being replaced, its session refused): only the
  outputs that failed are sent again, after a capped back-off, for as long as it takes;
  `stuck_seconds` says how long the oldest output has waited, which `/ready` and the metrics
  report. Outputs already queued or acknowledged are never sent again;
- rejected (any other non-retriable answer: too large, an invalid record, a policy): the record
  batch is split and each of its outputs resent alone; one that is refused again becomes a small
  dead letter (`output_too_large`, or `output_rejected`), which always fits; a stand-in that is
  refused too is fatal. So an output takes at most three sends;
- fatal (not authorized, failed authentication): `DeliveryFatal`, and the worker stops
  uncommitted.
After a refusal the producer is replaced: aiokafka does not roll back an idempotent producer's
sequence numbers for a batch the broker refused, so every later batch to that partition would
be refused as out of order. So is a producer whose sends keep failing without a broker answer
(a dead sender).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerResponseError

from kafka_common.batch_sender import send_in_batches
from kafka_common.errors import SIZE_ERRORS, classify_error, needs_new_producer
from kafka_common.settings import KafkaSettings
from stream_app.metrics import WorkerMetrics
from stream_app.records import Outgoing, refused_letter

log = logging.getLogger(__name__)

#: Largest record batch; the broker accepts up to 1 MiB by default.
MAX_BATCH_BYTES = 512 * 1024
#: Rounds of failed sends without any broker answer before the producer is replaced.
DEAD_PRODUCER_ROUNDS = 3
#: Longest a replacement producer may take to start.
PRODUCER_START_S = 30.0


class DeliveryFatal(RuntimeError):
    """Outputs that can never be delivered by this worker as configured (e.g. not authorized)."""


class Sink(Protocol):
    """Where outputs go (`KafkaSink`, or an in-memory fake in the unit tests)."""

    #: Bumped by every reset; `reset(generation)` of an older generation does nothing.
    generation: int

    async def send(
        self, outputs: Sequence[Outgoing], alone: bool = False
    ) -> list[tuple[asyncio.Future, list[Outgoing]]]:
        """Queues the outputs; one (future, its outputs) per record batch. `alone`: one output
        per batch, so one refused output cannot fail others. Outputs it could not queue get a
        failed future (raising instead means none was queued)."""
        ...

    async def reset(self, generation: int) -> None:
        """A fresh producer session, if `generation` is still the current one."""
        ...


class DeliveryResult(NamedTuple):
    """What one `deliver` call got acknowledged: `replaced` pairs (refused output, stand-in)."""

    replaced: list[tuple[Outgoing, Outgoing]]


class Delivery:
    """Delivers slices of outputs through a Sink, with defined outcomes for every failure."""

    def __init__(
        self,
        sink: Sink,
        metrics: WorkerMetrics | None = None,
        *,
        backoff: tuple[float, float] = (0.1, 5.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.backoff = backoff
        self.clock = clock
        self.last_error: str | None = None
        self._waiting: dict[int, float] = {}  # deliver call -> when it started
        self._calls = 0

    def stuck_seconds(self) -> float:
        """How long the oldest unacknowledged slice has waited (0 when none waits)."""
        if not self._waiting:
            return 0.0
        return max(0.0, self.clock() - min(self._waiting.values()))

    async def deliver(self, outputs: Sequence[Outgoing]) -> DeliveryResult:
        """Returns once the broker has acknowledged every output (or its stand-in).

        Raises DeliveryFatal when the worker may not write (authorization, authentication).
        """
        call = self._calls
        self._calls += 1
        self._waiting[call] = self.clock()
        try:
            return await self._deliver(list(outputs))
        finally:
            del self._waiting[call]

    async def _deliver(self, todo: list[Outgoing]) -> DeliveryResult:
        replaced: list[tuple[Outgoing, Outgoing]] = []
        alone: set[int] = set()  # ids of outputs to send one per batch (in a refused batch)
        stand_ins: set[int] = set()  # ids of stand-ins (refused, they are fatal)
        delay = self.backoff[0]
        silent_rounds = 0  # rounds whose every failure had no broker answer
        while todo:
            generation = self.sink.generation
            parts = await self._send(todo, alone)
            retry: list[Outgoing] = []
            wait = reset = False
            answered = False
            for future, outs in parts:
                try:
                    await future
                    answered = True
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # sorted below: every failure has an outcome
                    # The traceback holds this frame, which holds the error and every output
                    # of the slice: a reference cycle only the garbage collector frees, and
                    # the worker collects rarely while it streams (gc_policy.STREAM_GC_THRESHOLD).
                    exc.__traceback__ = None
                    error = exc
                kind = classify_error(error)
                self._count(kind, error)
                answered = answered or isinstance(error, BrokerResponseError)
                reset = reset or needs_new_producer(error)
                if kind == "fatal":
                    raise DeliveryFatal(f"{type(error).__name__}: {error}") from error
                if kind == "retriable":
                    retry += outs
                    wait = True
                elif len(outs) > 1:  # which one was refused? send each alone
                    alone.update(id(o) for o in outs)
                    retry += outs
                elif id(outs[0]) in stand_ins:
                    raise DeliveryFatal(
                        f"the broker refused even a {len(outs[0].value)}-byte dead letter: {error}"
                    ) from error
                else:
                    reason = (
                        "output_too_large" if isinstance(error, SIZE_ERRORS) else "output_rejected"
                    )
                    stand_in = refused_letter(
                        outs[0], reason, f"the broker refused the output: {error}"
                    )
                    log.warning(
                        "output for %s refused (%s); sending an %s dead letter",
                        outs[0].source,
                        type(error).__name__,
                        reason,
                    )
                    replaced.append((outs[0], stand_in))
                    stand_ins.add(id(stand_in))
                    alone.add(id(stand_in))
                    retry.append(stand_in)
            silent_rounds = 0 if answered or not retry else silent_rounds + 1
            if silent_rounds >= DEAD_PRODUCER_ROUNDS:  # e.g. a producer whose sender died
                reset, silent_rounds = True, 0
            if reset:
                await self.sink.reset(generation)
            if wait:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
            todo = retry
        return DeliveryResult(replaced)

    async def _send(
        self, todo: list[Outgoing], alone: set[int]
    ) -> list[tuple[asyncio.Future, list[Outgoing]]]:
        if alone:
            together = [o for o in todo if id(o) not in alone]
            single = [o for o in todo if id(o) in alone]
        else:  # the first round of every slice: no output was refused yet
            together, single = todo, []
        parts: list[tuple[asyncio.Future, list[Outgoing]]] = []
        for outs, by_one in ((together, False), (single, True)):
            if not outs:
                continue
            try:
                parts += await self.sink.send(outs, alone=by_one)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sink that raised queued none of them
                parts.append((failed_future(exc), outs))
        return parts

    def _count(self, kind: str, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        log.warning("delivery failed (%s): %s", kind, self.last_error)
        if self.metrics is not None:
            self.metrics.delivery_errors.labels(reason=kind).inc()


def failed_future(exc: BaseException) -> asyncio.Future:
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


class KafkaSink:
    """The worker's producer for assignments and dead letters (idempotent, acks=all)."""

    def __init__(self, kafka: KafkaSettings, output_topic: str, dlq_topic: str) -> None:
        self.kafka = kafka
        self.topics = {False: output_topic, True: dlq_topic}
        self.generation = 0
        self.producer: AIOKafkaProducer | None = None
        self._reset_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self.kafka.producer_options(),
            acks="all",
            enable_idempotence=True,
            max_batch_size=MAX_BATCH_BYTES,
            linger_ms=0,
        )

    async def start(self) -> None:
        self.producer = self._new_producer()
        await self.producer.start()

    async def stop(self) -> None:
        """Flushes and closes the producers (callers bound this: a flush to a broker that
        never answers never ends)."""
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await producer.stop()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def reset(self, generation: int) -> None:
        async with self._reset_lock:  # one replacement per generation, however many ask
            if generation != self.generation or self.producer is None:
                return
            fresh = self._new_producer()
            try:
                await asyncio.wait_for(fresh.start(), PRODUCER_START_S)
            except Exception as exc:
                await fresh.stop()
                if classify_error(exc) == "fatal":
                    raise DeliveryFatal(f"{type(exc).__name__}: {exc}") from exc
                # The broker is away: keep the old one; the next failed round asks again.
                log.warning("could not replace the producer: %s", exc)
                return
            self.generation += 1
            old, self.producer = self.producer, fresh
        log.info("producer replaced (generation %d)", self.generation)
        # The old one finishes (or fails) what it holds in the background.
        task = asyncio.create_task(old.stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def send(
        self, outputs: Sequence[Outgoing], alone: bool = False
    ) -> list[tuple[asyncio.Future, list[Outgoing]]]:
        """Queues the outputs. If queueing fails midway (no metadata, the producer closing),
        the outputs not yet queued get a failed future; those queued keep their own."""
        producer = self.producer
        if producer is None:
            return [(failed_future(RuntimeError("the producer is stopped")), list(outputs))]
        parts: list[tuple[asyncio.Future, list[Outgoing]]] = []
        try:
            # Grouped by (dead letter?, input partition) first: one dict lookup per output.
            by_input: dict[tuple[bool, int], list[Outgoing]] = collections.defaultdict(list)
            for out in outputs:
                by_input[(out[4], out[3])].append(out)
            groups: dict[tuple[str, int], list[Outgoing]] = collections.defaultdict(list)
            counts: dict[str, list[int]] = {}
            for (dead_letter, input_partition), outs in by_input.items():
                topic = self.topics[dead_letter]
                if topic not in counts:
                    counts[topic] = sorted(await producer.partitions_for(topic))
                available = counts[topic]
                groups[(topic, available[input_partition % len(available)])] += outs
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return [(failed_future(exc), list(outputs))]
        pending = list(groups.values())
        for (topic, partition), outs in groups.items():
            pending.pop(0)
            queued = len(parts)
            try:
                await send_in_batches(producer, topic, partition, outs, parts, alone)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                done = sum(len(members) for _, members in parts[queued:])
                unsent = outs[done:] + [o for rest in pending for o in rest]
                parts.append((failed_future(exc), unsent))
                break
        return parts
