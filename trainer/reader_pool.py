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
        self.kafka = kafka
        self.count = count
        self._standby: Readers | None = None

    async def take(self) -> Readers:
        """The waiting readers, or new ones (not yet started) if none wait or one died; the
        caller enters them (`async with`), which stops them however the read ends."""
        readers, self._standby = self._standby, None
        if readers is not None and readers.alive():
            return readers
        if readers is not None:
            log.warning("a standby window reader died; the read starts its own")
            await readers.__aexit__(None, None, None)
        return Readers(self.kafka, self.count)

    async def refill(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Starts readers for the next read, unless some wait already, and waits until they are
        ready. False (logged) if they could not start: the next read then starts its own."""
        if self._standby is not None and self._standby.alive():
            return True
        await self.close()
        readers = Readers(self.kafka, self.count)
        try:
            await readers.start()
            await asyncio.wait_for(readers.ready(), timeout_s)
        except (ReaderError, TimeoutError, OSError) as exc:
            log.warning("could not start standby window readers: %s", exc)
            await readers.__aexit__(None, None, None)
            return False
        except BaseException:
            await readers.__aexit__(None, None, None)
            raise
        self._standby = readers
        return True

    async def close(self) -> None:
        """Stops the waiting readers, if any."""
        readers, self._standby = self._standby, None
        if readers is not None:
            with contextlib.suppress(ProcessLookupError):
                await readers.__aexit__(None, None, None)
