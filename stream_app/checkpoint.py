"""The at-least-once checkpoint: which input offsets may be committed, and when.

Each micro-batch goes through FETCHED (read from the input topic) -> STARTED (being classified)
-> DELIVERED (the broker acknowledged every output of it) or FAILED (it never will be). The rule
is one line: **an offset is committed only when its batch and every batch fetched before it are
DELIVERED**. So a commit never passes a record whose output is not in Kafka (no loss), and a
crash repeats at most the batches delivered since the last commit (bounded duplicates).

- Commits run in the background (`run`), one at a time, each carrying every assigned
  partition's newest committable offset; a failed commit is retried with a capped back-off
  until it succeeds, whether or not new batches arrive.
- A rebalance (`revoke`) waits, up to a timeout, until every fetched batch is settled, commits,
  then forgets the revoked partitions, so the next owner starts right after the last delivered
  record. After the timeout it logs what it gave up; what was still in flight is read again by
  the next owner (duplicates, never a loss), and is never committed by this worker.
- A graceful stop (`stop`) waits, up to a timeout, for the batches already started (their first
  slices may be in Kafka; finishing them avoids repeating them), then commits once. Batches
  fetched but not started are left to be read again.
- A FAILED batch (a fatal error) blocks every commit past it; `fatal` says why.
- The feeder fetches only while fewer than a few batches are unsettled (`room`), so a crash
  repeats at most those batches, and a stuck one stops fetching rather than piling up.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from aiokafka import TopicPartition

from kafka_common.errors import classify_error
from stream_app.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class State(enum.Enum):
    FETCHED = "fetched"
    STARTED = "started"
    DELIVERED = "delivered"
    FAILED = "failed"


class Committer(Protocol):
    """What the checkpoint needs of the input consumer (`PointSource`, or a fake in tests)."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...


class _Batch:
    __slots__ = ("offsets", "since", "state")

    def __init__(self, offsets: dict[TopicPartition, int], since: float) -> None:
        self.offsets = offsets
        self.since = since  # clock() when fetched
        self.state = State.FETCHED


class Checkpoint:
    """Owns the at-least-once protocol between the input consumer and delivery."""

    def __init__(
        self,
        committer: Committer,
        metrics: WorkerMetrics | None = None,
        *,
        on_fatal: Callable[[str], None] | None = None,
        backoff: tuple[float, float] = (0.1, 5.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.committer = committer
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.backoff = backoff
        self.clock = clock
        self.fatal: str | None = None
        self.commit_errors = 0
        self._batches: collections.OrderedDict[int, _Batch] = collections.OrderedDict()
        self._next = 0  # number the next fetched batch must carry
        self._done: dict[TopicPartition, int] = {}  # committable: next offset to read
        self._committed: dict[TopicPartition, int] = {}
        self._pending_since: float | None = None  # when _done first got ahead of _committed
        self._changed = asyncio.Event()  # replaced by a fresh one at every change (see _notify)
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- batches --------------------------------------------------------------------------

    def fetched(self, number: int, offsets: Mapping[TopicPartition, int]) -> None:
        """Registers a batch read from the input; numbers run 0, 1, 2, ... in fetch order."""
        if number != self._next:
            raise ValueError(f"batch {number} fetched, {self._next} expected")
        self._next += 1
        self._batches[number] = _Batch(dict(offsets), self.clock())
        self._notify()

    def started(self, number: int) -> None:
        """The batch is being classified: a graceful stop finishes it."""
        self._batch(number).state = State.STARTED
        self._notify()

    def delivered(self, number: int) -> None:
        """Every output of the batch is acknowledged; its offsets may be committed in turn."""
        self._batch(number).state = State.DELIVERED
        while self._batches:
            first = next(iter(self._batches.values()))
            if first.state is not State.DELIVERED:
                break
            self._batches.popitem(last=False)
            self._done.update(first.offsets)
        if self._pending_since is None and self._uncommitted():
            self._pending_since = self.clock()
        self._wanted.set()
        self._notify()

    def failed(self, number: int, reason: str) -> None:
        """The batch will never be delivered: nothing at or after it is committed again."""
        self._batch(number).state = State.FAILED
        self._fail(f"batch {number}: {reason}")

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this worker no longer owns: none of their offsets is committed again."""
        gone = set(partitions)
        for batch in self._batches.values():
            for tp in gone:
                batch.offsets.pop(tp, None)
        for tp in gone:
            self._done.pop(tp, None)
            self._committed.pop(tp, None)
        if not self._uncommitted():
            self._pending_since = None

    def _batch(self, number: int) -> _Batch:
        try:
            return self._batches[number]
        except KeyError:
            raise ValueError(f"batch {number} is not in flight") from None

    def _fail(self, reason: str) -> None:
        if self.fatal is None:
            self.fatal = reason
            log.critical("checkpoint halted: %s", reason)
            if self.on_fatal is not None:
                self.on_fatal(reason)
        self._notify()

    # -- what is in flight ----------------------------------------------------------------

    def in_flight(self, started_only: bool = False) -> int:
        """Batches fetched (or only those started) and not yet delivered."""
        states = (State.STARTED,) if started_only else (State.FETCHED, State.STARTED)
        return sum(b.state in states for b in self._batches.values())

    def unsettled_seconds(self) -> float:
        """How long the oldest batch not yet committable has been in flight (0: none is).

        A batch that never settles (lost between the feeder and the agent, say) holds every
        commit behind it: this is how long that has lasted."""
        if not self._batches:
            return 0.0
        return max(0.0, self.clock() - next(iter(self._batches.values())).since)

    def pending_seconds(self) -> float:
        """How long delivered offsets have waited for a commit (0 when all are committed)."""
        if self._pending_since is None:
            return 0.0
        return max(0.0, self.clock() - self._pending_since)

    async def _wait(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        # Wakes every waiter: each re-checks its condition and waits on the fresh event.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def room(self, limit: int) -> None:
        """Waits until fewer than `limit` batches are unsettled: in flight, or delivered but
        waiting behind one in flight (backpressure for the feeder)."""
        await self._wait(lambda: self.fatal is not None or len(self._batches) < limit)

    async def settled(self, timeout: float, started_only: bool = False) -> bool:
        """Waits until nothing (or nothing started) is in flight; False on timeout or failure."""
        try:
            await asyncio.wait_for(
                self._wait(lambda: self.fatal is not None or self.in_flight(started_only) == 0),
                timeout,
            )
        except TimeoutError:
            return False
        return self.fatal is None

    # -- commits --------------------------------------------------------------------------

    def _uncommitted(self) -> dict[TopicPartition, int]:
        assigned = self.committer.assignment()
        return {
            tp: offset
            for tp, offset in self._done.items()
            if tp in assigned and self._committed.get(tp) != offset
        }

    async def commit_now(self) -> None:
        """Commits every owned partition's newest committable offset (raises on failure)."""
        async with self._lock:
            began = self.clock()
            offsets = self._uncommitted()
            if offsets:
                await self.committer.commit(offsets)
                self._committed.update(offsets)
            if self.metrics is not None:
                self.metrics.last_commit_timestamp_seconds.set(time.time())
            # What was delivered during the round trip waits for the next commit, since `began`
            # at the earliest: under steady load the pending time stays one round trip.
            self._pending_since = began if self._uncommitted() else None

    async def run(self) -> None:
        """The background commit loop: commits whenever there is something new to commit."""
        delay = self.backoff[0]
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.commit_now()
                delay = self.backoff[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure has an outcome: fatal, or retried
                self.commit_errors += 1
                if self.metrics is not None:
                    self.metrics.commit_errors.inc()
                if classify_error(exc) == "fatal":
                    self._fail(f"offset commit refused: {type(exc).__name__}: {exc}")
                    return
                # Re-armed: retried after the back-off even if no batch arrives meanwhile.
                log.warning("offset commit failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                self._wanted.set()

    async def revoke(self, partitions: Iterable[TopicPartition], timeout: float) -> None:
        """Before `partitions` move to another worker: settle, commit, forget them."""
        partitions = list(partitions)
        if not await self.settled(timeout) and self.fatal is None:
            log.warning(
                "rebalance: %d batch(es) still in flight after %.0f s; giving up %d "
                "partition(s) without them: their next owner reads them again",
                self.in_flight(),
                timeout,
                len(partitions),
            )
        if self.fatal is None:
            try:
                await asyncio.wait_for(self.commit_now(), timeout)
            except Exception as exc:
                log.warning("commit before giving up partitions failed: %s", exc)
        self.forget(partitions)

    async def stop(self, timeout: float) -> None:
        """A graceful stop: finish the started batches (up to `timeout`), then commit once."""
        if not await self.settled(timeout, started_only=True) and self.fatal is None:
            log.warning(
                "stopping with %d started batch(es) undelivered after %.0f s: they are read "
                "again at the restart",
                self.in_flight(started_only=True),
                timeout,
            )
        try:
            await asyncio.wait_for(self.commit_now(), timeout)
        except Exception as exc:
            log.warning("final commit failed: %s", exc)
