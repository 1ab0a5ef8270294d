"""The worker's topics and the JSON records on each.

- input (`GMM_INPUT_TOPIC`): `PointRecord`, raw bytes validated by `mixture.points`.
- output (`GMM_OUTPUT_TOPIC`): `wire.assignment`, same Kafka key as the input record.
- dead letters (`GMM_DLQ_TOPIC`): `wire.dead_letter`, same Kafka key as the input record.
- params (`GMM_PARAMS_TOPIC`, compacted, key = model name): `mixture.params.ModelParams` JSON,
  read by `kafka_common.params_topic` outside any consumer group.
- the in-memory channel of micro-batches (`stream_app.source.InBatch`), from the feeder to the
  agent.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import faust
from mode.utils.queues import ThrowableQueue


class PointRecord(TypedDict):
    """Input: `{"id": "p-1", "x": 4.2}` or `{"x": [1.0, 2.5]}`; id optional."""

    id: NotRequired[str | int]
    x: float | list[float]


class BatchChannel(faust.Channel):
    """An in-memory channel of micro-batches that no rebalance of the app's group can drop.

    Faust drops queued events when its own consumer group rebalances: it clears channel queues
    (`clear_on_resume`) and its streams skip events of an older generation. Both are right for
    events it will fetch from Kafka again, wrong for these batches, which exist nowhere else: a
    dropped batch would be skipped, and a later batch's commit would pass it. So the queue is
    not cleared, and `put_batch` queues the batch itself, not an Event (streams yield plain
    values as they are).
    """

    async def put_batch(self, batch: Any) -> None:
        """Queues one batch for the agent; waits while the app's group rebalances."""
        await self.put(batch)

    @property
    def queue(self) -> ThrowableQueue:
        if self._queue is None:
            maxsize = self.maxsize or self.app.conf.stream_buffer_maxsize
            self._queue = self.app.FlowControlQueue(maxsize=maxsize, clear_on_resume=False)
        return self._queue


def batches_channel(app: faust.App, maxsize: int = 2) -> BatchChannel:
    """The agent's input: one event per micro-batch of the input topic."""
    return BatchChannel(app, maxsize=maxsize)
