"""The worker's Faust agent and tasks: thin functions over the Worker (stream_app.worker)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from stream_app.topics import BatchChannel
from stream_app.worker import Worker


def register(app: faust.App, worker: Worker, channel: BatchChannel) -> None:
    """Adds the agent (one micro-batch per event) and the worker's tasks to `app`."""

    @app.agent(channel, concurrency=1, name="gmm.classify_batches")
    async def classify_batches(batches: Any) -> None:
        """Classifies and sends each micro-batch (Worker.handle)."""
        async for batch in batches:
            # Shielded: a stop cancels the agent, not a batch whose first slices may already
            # be in Kafka; the feeder's stop waits for it to finish (Checkpoint.stop).
            await asyncio.shield(worker.handle(batch))

    @app.task
    async def follow_params() -> None:
        await worker.follow_params()

    @app.task
    async def feed_points() -> None:
        await worker.feed(channel.put_batch)

    @app.task
    async def watch_lag() -> None:
        await worker.watch_lag()

    @app.task
    async def report_shadow() -> None:
        await worker.report_shadow()
