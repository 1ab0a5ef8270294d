"""Window readers kept started between the trainer's cycles.

A reader process (`trainer.window_readers`) takes about half a second to start: the interpreter,
its imports (aiokafka, NumPy) and its first frame. When a read starts its readers itself, that
start sits on the read's path (the ranges are known in a tenth of a second); at a window of a
million records it was about a tenth of the read (bench/results/window.md). The run loop holds
a `ReaderPool` and refills it after each cycle, off every read's path: the next read takes
readers that are already waiting for their request.

A reader still serves one read only (then it exits), as before: nothing of one window stays in
a process that reads the next. A standby reader whose trainer is gone exits (its stdin ends);
one found dead when a read takes the pool is replaced there, as if there had been no pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kafka_common.settings import KafkaSettings
from trainer.window_readers import ReaderError, Readers

log = logging.getLogger(__name__)

#: How long `refill` waits for new readers to say they are ready.
READY_TIMEOUT_S = 60.0


class ReaderPool:
    """`count` reader processes started ahead of the next read (`refill`), taken by it
    (`take`)."""

    def __init__(self, kafka: KafkaSettings, count: int) -> None:
        if count < 2:
            raise ValueError(f"a pool of window readers needs 2 or more, not {count}")
        self.kafka = kafka
        self.count = count
        #: Reads that found their readers waiting (the others started their own).
        self.taken = 0
        self._standby: Readers | None = None
        self._lock = asyncio.Lock()  # one refill, take or close at a time

    async def take(self) -> Readers:
        """The waiting readers, or new ones (not yet started) if none wait or one died; the
        caller enters them (`async with`), which stops them however the read ends."""
        async with self._lock:
            readers, self._standby = self._standby, None
            if readers is not None and readers.alive():
                self.taken += 1
                log.info("the read takes %d waiting window readers", len(readers.procs))
                return readers
            if readers is not None:
                log.warning("a standby window reader died; the read starts its own")
                await readers.__aexit__(None, None, None)
            return Readers(self.kafka, self.count)

    async def refill(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Starts readers for the next read, unless some wait already, and waits until they are
        ready. False (logged) if they could not start: the next read then starts its own.
        Never raises but for a cancellation: the pool only saves time."""
        async with self._lock:
            if self._standby is not None and self._standby.alive():
                return True
            await self._close()
            readers = Readers(self.kafka, self.count)
            try:
                await readers.start()
                await asyncio.wait_for(readers.ready(), timeout_s)
            except Exception as exc:
                expected = isinstance(exc, ReaderError | TimeoutError | OSError)
                log.warning(
                    "could not start standby window readers: %s", exc, exc_info=not expected
                )
                await readers.__aexit__(None, None, None)
                return False
            except BaseException:
                await readers.__aexit__(None, None, None)
                raise
            self._standby = readers
            return True

    async def close(self) -> None:
        """Stops the waiting readers, if any."""
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        readers, self._standby = self._standby, None
        if readers is not None:
            with contextlib.suppress(ProcessLookupError):
                await readers.__aexit__(None, None, None)
