"""Window readers kept started between cycles (trainer.reader_pool), without a broker: a
reader says `ready` once started and then waits for its request, which needs no broker."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kafka_common.settings import KafkaSettings
from tests.conftest import window_readers_of
from trainer.reader_pool import ReaderPool
from trainer.window_readers import Readers

pytestmark = pytest.mark.unit

#: Nothing listens there: a reader that tried to read would fail, and none here does.
KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:9")


def test_refill_starts_ready_readers_once_and_close_stops_them():
    async def go() -> tuple[list[int], list[int], list[int]]:
        pool = ReaderPool(KAFKA, 2)
        try:
            assert await pool.refill()
            first = sorted(window_readers_of())
            assert await pool.refill()  # they wait already: nothing new starts
            again = sorted(window_readers_of())
        finally:
            await pool.close()
        return first, again, window_readers_of()

    first, again, after = asyncio.run(go())
    assert len(first) == 2 and again == first
    assert after == []


def test_a_read_takes_the_waiting_readers_and_the_next_refill_starts_others():
    async def go() -> tuple[set[int], set[int], set[int], list[int]]:
        pool = ReaderPool(KAFKA, 2)
        try:
            await pool.refill()
            waiting = set(window_readers_of())
            taken = await pool.take()
            assert taken.alive() and pool.taken == 1
            async with taken:  # as read_window enters them: they are stopped on leaving
                used = {proc.pid for proc in taken.procs}
            await pool.refill()
            fresh = set(window_readers_of())
        finally:
            await pool.close()
        return waiting, used, fresh, window_readers_of()

    waiting, used, fresh, after = asyncio.run(go())
    assert used == waiting
    assert len(fresh) == 2 and not fresh & used
    assert after == []


def test_a_dead_standby_is_replaced_by_the_read_itself(caplog):
    async def go() -> tuple[Readers, list[int]]:
        pool = ReaderPool(KAFKA, 2)
        try:
            await pool.refill()
            assert pool._standby is not None
            victim = pool._standby.procs[0]
            victim.kill()
            await victim.wait()
            taken = await pool.take()
        finally:
            await pool.close()
        return taken, window_readers_of()

    with caplog.at_level(logging.WARNING, logger="trainer.reader_pool"):
        taken, after = asyncio.run(go())
    assert taken.procs == [] and taken.count == 2  # new readers, started when entered
    assert after == []  # the standby that lived was stopped with the dead one
    assert "standby window reader died" in caplog.text


def test_readers_that_cannot_start_leave_the_pool_empty(monkeypatch, caplog):
    async def refused(self: Readers) -> None:
        raise OSError("no processes left")

    monkeypatch.setattr(Readers, "start", refused)

    async def go() -> tuple[bool, Readers]:
        pool = ReaderPool(KAFKA, 2)
        ok = await pool.refill()
        return ok, await pool.take()

    with caplog.at_level(logging.WARNING, logger="trainer.reader_pool"):
        ok, taken = asyncio.run(go())
    assert not ok and taken.procs == []
    assert "could not start standby window readers: no processes left" in caplog.text


def test_concurrent_refills_start_one_set_of_readers():
    async def go() -> tuple[list[bool], list[int], list[int]]:
        pool = ReaderPool(KAFKA, 2)
        try:
            results = await asyncio.gather(pool.refill(), pool.refill(), pool.refill())
            running = window_readers_of()
        finally:
            await pool.close()
        return results, running, window_readers_of()

    results, running, after = asyncio.run(go())
    assert results == [True, True, True]
    assert len(running) == 2  # not 6: the later refills found the first one's readers
    assert after == []


def test_a_pool_is_of_two_readers_or_more():
    with pytest.raises(ValueError, match="2 or more, not 1"):
        ReaderPool(KAFKA, 1)
