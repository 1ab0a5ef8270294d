"""Signed models on the real broker: workers with a verify key install only records the
trainer signed; an unsigned, re-signed-by-another-key or altered record is refused and
counted, and the served model does not change."""

from __future__ import annotations

import asyncio

from kafka_common.params_topic import Publisher, history_spec, params_spec
from kafka_common.settings import KafkaSettings
from kafka_common.signing import Signer, keygen
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import Topics, publish_model, wait_for


def model(version: int, locs=(2.0, 9.0)) -> ModelParams:
    return ModelParams(
        version,
        MixtureParams([0.3, 0.7], [[locs[0]], [locs[1]]], [1.0]),
        FitMetadata(fitted_at="2026-11-28T00:00:00+00:00"),
    )


def test_workers_serve_only_signed_models(kafka_bootstrap, start_worker, tmp_path):
    ours = keygen(tmp_path / "ours")
    theirs = keygen(tmp_path / "theirs")
    topics = Topics("signed")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    asyncio.run(
        ensure_topics(
            kafka,
            [TopicSpec(topics.input, 2), params_spec(topics.params), history_spec(topics.history)],
        )
    )
    signer = Signer.from_file(ours[0])
    publisher = Publisher(kafka, topics.params, topics.history, "gmm", signer=signer)
    asyncio.run(publisher.publish(model(0), "trainer"))  # v1, signed
    worker = start_worker(topics, GMM_PARAMS_VERIFY_KEY=str(ours[1]))
    assert worker.wait_ready()["model_version"] == 1

    def rejected() -> float:
        return worker.metric("gmm_params_rejected_total", reason="bad_signature")

    # 1. Unsigned, with a higher version: refused.
    publish_model(kafka_bootstrap, topics.params, model(50, (100.0, 200.0)))
    wait_for(lambda: rejected() == 1, 30, message="unsigned refused")
    # 2. Signed with another key: refused.
    forged = model(60, (100.0, 200.0)).dumps().encode()
    produce_signed(kafka_bootstrap, topics.params, forged, Signer.from_file(theirs[0]))
    wait_for(lambda: rejected() == 2, 30, message="other key refused")
    # 3. A genuine signature on altered bytes: refused.
    genuine = model(70).dumps().encode()
    altered = genuine.replace(b"9.0", b"99.0")
    assert altered != genuine
    produce_signed(kafka_bootstrap, topics.params, altered, signer, signed=genuine)
    wait_for(lambda: rejected() == 3, 30, message="altered refused")
    assert worker.metric("gmm_model_version") == 1

    # The trainer's next (signed) version is installed: the worker was listening all along.
    # Its version is above the forged ones' only because the publisher reads signed records.
    published = asyncio.run(publisher.publish(model(0, (2.5, 9.5)), "trainer"))
    assert published.version == 2
    wait_for(lambda: worker.metric("gmm_model_version") == 2, 30, message="signed v2 served")


def produce_signed(
    bootstrap: str, topic: str, value: bytes, signer: Signer, signed: bytes | None = None
) -> None:
    """Writes `value` with the signature of `signed` (default: of value itself)."""
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            headers = signer.headers(b"gmm", signed if signed is not None else value)
            await producer.send_and_wait(topic, value, key=b"gmm", headers=headers)
        finally:
            await producer.stop()

    asyncio.run(go())
