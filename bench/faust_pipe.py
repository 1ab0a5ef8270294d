"""A second baseline for bench/stream: a Faust agent that only moves records (no parse, no model).

Same consumption and delivery as the worker (noack_take micro-batches, send, wait, ack), so the
gap between it and the raw aiokafka pipe is Faust's own cost, and the gap between it and the
worker is the service's. Configured by the worker's environment variables.

    faust -A bench.faust_pipe worker -l warn
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust

from kafka_common import zstd_level

if os.environ.get("GMM_OUTPUT_COMPRESSION") == "zstd" and os.environ.get("GMM_OUTPUT_ZSTD_LEVEL"):
    zstd_level.install(int(os.environ["GMM_OUTPUT_ZSTD_LEVEL"]))

app = faust.App(
    os.environ["GMM_CONSUMER_GROUP"],
    broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    producer_compression_type=(
        None
        if os.environ.get("GMM_OUTPUT_COMPRESSION", "none") == "none"
        else os.environ["GMM_OUTPUT_COMPRESSION"]
    ),
    web_port=int(os.environ["GMM_WORKER_WEB_PORT"]),
    web_bind="127.0.0.1",
    datadir=os.environ.get("GMM_WORKER_DATA_DIR", "/tmp/faust-pipe"),
    store="memory://",
)
source = app.topic(os.environ["GMM_INPUT_TOPIC"], key_serializer="raw", value_serializer="raw")
DEST = os.environ["GMM_OUTPUT_TOPIC"]
MAX_BATCH = int(os.environ.get("GMM_MAX_BATCH", "1024"))


@app.agent(source, concurrency=1)
async def move(stream: Any) -> None:
    async for events in stream.noack_take(MAX_BATCH, within=0.02):
        pending = [
            await app.producer.send(DEST, e.message.key, e.message.value, None, None, None)
            for e in events
        ]
        await asyncio.gather(*pending)
        for e in events:
            await stream.ack(e)
