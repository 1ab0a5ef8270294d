"""Names share the params topic: a publisher of one name killed mid-transaction holds up the
other names' read_committed readers only until the broker aborts its transaction (the
publisher's transaction timeout, PUBLISH_TRANSACTION_TIMEOUT_MS, plus the broker's 10 s check),
and no publisher reads a stale state meanwhile (its version numbers stay unique)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

from kafka_common.params_topic import (
    PUBLISH_TRANSACTION_TIMEOUT_MS,
    Publisher,
    history_spec,
    params_spec,
    read_newest,
)
from kafka_common.settings import KafkaSettings
from kafka_common.topics import ensure_topics
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import Topics

#: The broker's transaction.abort.timed.out.transaction.cleanup.interval.ms (its default).
BROKER_ABORT_CHECK_S = 10.0

#: A publisher of a name that hangs inside its transaction, records sent, commit never
#: reached: the real Publisher, its commit replaced by a wait.
HANG_IN_TRANSACTION = textwrap.dedent(
    """
    import asyncio, sys
    from aiokafka import AIOKafkaProducer
    from kafka_common.params_topic import Publisher
    from kafka_common.settings import KafkaSettings
    from mixture.params import FitMetadata, MixtureParams, ModelParams

    async def hang(self):
        await self.flush()  # the records are on the broker, inside the open transaction
        print("open", flush=True)
        await asyncio.Event().wait()

    AIOKafkaProducer.commit_transaction = hang
    bootstrap, params, history, name = sys.argv[1:5]
    publisher = Publisher(KafkaSettings(bootstrap_servers=bootstrap), params, history, name)
    model = ModelParams(0, MixtureParams([1.0], [[0.0]], [1.0]), FitMetadata())
    asyncio.run(publisher.publish(model, "trainer"))
    """
)


def model() -> ModelParams:
    return ModelParams(0, MixtureParams([0.5, 0.5], [[0.0], [5.0]], [1.0]), FitMetadata())


def test_a_publisher_killed_mid_transaction_delays_other_names_boundedly(kafka_bootstrap):
    topics = Topics("opentxn")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    asyncio.run(ensure_topics(kafka, [params_spec(topics.params), history_spec(topics.history)]))
    # Names of their own: a transactional id is per name, shared by every test of one name.
    name, stuck = f"ok-{topics.group}", f"stuck-{topics.group}"
    other = Publisher(kafka, topics.params, topics.history, name)
    assert asyncio.run(other.publish(model(), "trainer")).version == 1

    topic_args = (topics.params, topics.history)
    hanging = subprocess.Popen(
        [sys.executable, "-c", HANG_IN_TRANSACTION, kafka_bootstrap, *topic_args, stuck],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert hanging.stdout is not None
        assert hanging.stdout.readline().strip() == "open"  # its records are on the topics
    finally:
        hanging.kill()
        hanging.wait(10)
    killed = time.monotonic()

    # The other name's next publication waits for the dead transaction to be aborted, then
    # reads version 1 (committed before the stuck transaction began: hidden behind it till then).
    assert asyncio.run(other.publish(model(), "trainer")).version == 2
    newest = asyncio.run(read_newest(kafka, topics.params, name))
    waited = time.monotonic() - killed
    assert newest is not None and newest.version == 2
    bound = PUBLISH_TRANSACTION_TIMEOUT_MS / 1000 + BROKER_ABORT_CHECK_S
    print(f"\nother name's readers held up {waited:.1f} s by a dead transaction (bound {bound} s)")
    # Kafka's default transaction timeout (60 s) would hold them up over a minute.
    assert waited < bound + 15, f"held up {waited:.1f} s"
    # The stuck name's record was aborted, never served.
    assert asyncio.run(read_newest(kafka, topics.params, stuck)) is None
