"""The at-least-once checkpoint, driven with in-memory fakes of the consumer."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import GroupAuthorizationFailedError, RequestTimedOutError

from stream_app.checkpoint import Checkpoint
from tests.unit.stream_app.fakes import TP0, TP1, FakeCommitter


def make(committer: FakeCommitter | None = None, **kwargs) -> tuple[Checkpoint, FakeCommitter]:
    committer = committer or FakeCommitter()
    halted: list[str] = []
    checkpoint = Checkpoint(committer, on_fatal=halted.append, backoff=(0.01, 0.05), **kwargs)
    checkpoint.halted = halted  # type: ignore[attr-defined]
    return checkpoint, committer


async def eventually(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_commits_only_the_delivered_prefix_in_fetch_order():
    cp, committer = make()
    cp.fetched(0, {TP0: 10})
    cp.fetched(1, {TP0: 20, TP1: 5})
    cp.fetched(2, {TP1: 9})
    cp.delivered(1)  # out of order: batch 0 is still in flight
    await cp.commit_now()
    assert committer.last == {}
    cp.delivered(0)
    await cp.commit_now()
    assert committer.last == {TP0: 20, TP1: 5}  # batches 0 and 1, never 2
    cp.delivered(2)
    await cp.commit_now()
    assert committer.last == {TP0: 20, TP1: 9}
    assert cp.in_flight() == 0


async def test_batch_numbers_must_follow_fetch_order():
    cp, _ = make()
    cp.fetched(0, {TP0: 1})
    with pytest.raises(ValueError, match="batch 2 fetched, 1 expected"):
        cp.fetched(2, {TP0: 3})
    with pytest.raises(ValueError, match="not in flight"):
        cp.delivered(5)


async def test_a_failed_commit_is_retried_without_new_batches():
    cp, committer = make()
    committer.fail = lambda attempt: RequestTimedOutError() if attempt <= 2 else None
    loop_task = asyncio.create_task(cp.run())
    try:
        cp.fetched(0, {TP0: 7})
        cp.delivered(0)  # the only batch: nothing new will arrive to re-arm the loop
        await eventually(lambda: committer.last == {TP0: 7})
        assert committer.attempts == 3 and cp.commit_errors == 2
        assert cp.pending_seconds() == 0.0 and cp.fatal is None
    finally:
        loop_task.cancel()


async def test_pending_seconds_grow_while_commits_fail():
    now = [100.0]
    cp, committer = make(clock=lambda: now[0])
    committer.fail = lambda attempt: RequestTimedOutError()
    cp.fetched(0, {TP0: 7})
    cp.delivered(0)
    now[0] = 130.0
    with pytest.raises(RequestTimedOutError):
        await cp.commit_now()
    assert cp.pending_seconds() == 30.0


async def test_a_refused_commit_is_fatal():
    cp, committer = make()
    committer.fail = lambda attempt: GroupAuthorizationFailedError()
    loop_task = asyncio.create_task(cp.run())
    cp.fetched(0, {TP0: 7})
    cp.delivered(0)
    await asyncio.wait_for(loop_task, 5)  # the loop ends: nothing to retry
    assert cp.fatal is not None and "GroupAuthorizationFailedError" in cp.fatal
    assert cp.halted == [cp.fatal]


async def test_a_failed_batch_blocks_every_commit_past_it():
    cp, committer = make()
    for n in range(3):
        cp.fetched(n, {TP0: 10 * (n + 1)})
    cp.delivered(0)
    cp.failed(1, "inference raised")
    cp.delivered(2)
    await cp.stop(timeout=1)
    assert committer.last == {TP0: 10}  # batch 0 only
    assert cp.halted == ["batch 1: inference raised"]


async def test_rebalance_waits_for_batches_in_flight_then_commits_and_forgets():
    cp, committer = make()
    cp.fetched(0, {TP0: 10, TP1: 3})
    cp.started(0)
    revoke = asyncio.create_task(cp.revoke([TP1], timeout=5))
    await asyncio.sleep(0.05)
    assert not revoke.done() and committer.commits == []  # waits for batch 0
    cp.delivered(0)
    await asyncio.wait_for(revoke, 5)
    assert committer.last == {TP0: 10, TP1: 3}  # handed over settled
    committer.assigned = {TP0}
    cp.fetched(1, {TP0: 11})
    cp.delivered(1)
    await cp.commit_now()
    assert committer.commits[-1] == {TP0: 11}  # TP1 is never committed again


async def test_rebalance_timeout_gives_up_in_flight_offsets_of_revoked_partitions():
    cp, committer = make()
    cp.fetched(0, {TP0: 10, TP1: 3})
    cp.started(0)
    await cp.revoke([TP1], timeout=0.05)  # batch 0 is still in flight
    assert committer.commits == []
    committer.assigned = {TP0}
    cp.delivered(0)  # late: its TP1 offset belongs to the new owner now
    await cp.commit_now()
    assert committer.last == {TP0: 10}


async def test_stop_finishes_started_batches_but_not_unstarted_ones():
    cp, committer = make()
    cp.fetched(0, {TP0: 256})  # a batch of several slices, being delivered
    cp.started(0)
    cp.fetched(1, {TP0: 512})  # fetched, never started
    stop = asyncio.create_task(cp.stop(timeout=5))
    await asyncio.sleep(0.05)
    assert not stop.done()  # waits for the started batch's remaining slices
    cp.delivered(0)
    await asyncio.wait_for(stop, 5)  # does not wait for batch 1
    assert committer.last == {TP0: 256}


async def test_stop_gives_up_after_its_timeout():
    cp, committer = make()
    cp.fetched(0, {TP0: 1})
    cp.started(0)
    await asyncio.wait_for(cp.stop(timeout=0.05), 5)
    assert committer.commits == []


async def test_room_is_backpressure_on_batches_in_flight():
    cp, _ = make()
    cp.fetched(0, {TP0: 1})
    cp.fetched(1, {TP0: 2})
    waiting = asyncio.create_task(cp.room(2))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    cp.delivered(0)
    await asyncio.wait_for(waiting, 5)


async def test_pending_seconds_stay_one_round_trip_under_steady_load():
    now = [0.0]
    committer = FakeCommitter()
    cp, _ = make(committer, clock=lambda: now[0])

    async def slow_commit(offsets):
        now[0] += 0.005
        number = cp._next  # a batch is delivered during every commit's round trip
        cp.fetched(number, {TP0: number + 1})
        cp.delivered(number)
        committer.commits.append(dict(offsets))

    committer.commit = slow_commit  # type: ignore[method-assign]
    cp.fetched(0, {TP0: 1})
    cp.delivered(0)
    for _ in range(100):
        await cp.commit_now()
        now[0] += 0.002
    assert cp.pending_seconds() < 0.01  # not the 0.7 s the run lasted


async def test_room_counts_delivered_batches_waiting_behind_a_stuck_one():
    cp, _ = make()
    cp.fetched(0, {TP0: 1})  # stuck
    cp.fetched(1, {TP1: 1})
    cp.delivered(1)  # delivered, but not committable behind batch 0
    waiting = asyncio.create_task(cp.room(2))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    cp.delivered(0)
    await asyncio.wait_for(waiting, 5)


async def test_unsettled_seconds_measure_the_oldest_batch_holding_commits():
    now = [10.0]
    cp, _ = make(clock=lambda: now[0])
    assert cp.unsettled_seconds() == 0.0
    cp.fetched(0, {TP0: 1})  # never settles
    now[0] = 15.0
    cp.fetched(1, {TP0: 2})
    cp.delivered(1)
    now[0] = 50.0
    assert cp.unsettled_seconds() == 40.0
    cp.delivered(0)
    assert cp.unsettled_seconds() == 0.0
