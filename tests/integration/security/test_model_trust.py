"""The model trust chain on the real broker: a signature holds for the record it was made for
(copies under another key, or from the history topic, are refused), replays of old records
change nothing, and a key rotation done as docs/security.md says keeps versions climbing,
rollback reaching the retired key's versions and shadow scoring going."""

from __future__ import annotations

import asyncio
import dataclasses
import math

from aiokafka import AIOKafkaProducer

from kafka_common.params_topic import Publisher, history_spec, params_spec, read_state
from kafka_common.settings import KafkaSettings
from kafka_common.signing import Signer, Verifier, keygen
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import Topics, wait_for
from trainer import lifecycle
from trainer.settings import TrainerSettings


def model(locs=(2.0, 9.0)) -> ModelParams:
    return ModelParams(
        0,
        MixtureParams([0.3, 0.7], [[locs[0]], [locs[1]]], [1.0]),
        FitMetadata(fitted_at="2026-12-02T00:00:00+00:00"),
    )


def make_topics(bootstrap: str, stem: str) -> tuple[Topics, KafkaSettings]:
    topics = Topics(stem)
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    specs = [TopicSpec(topics.input, 2), params_spec(topics.params), history_spec(topics.history)]
    asyncio.run(ensure_topics(kafka, specs))
    return topics, kafka


def write(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list]]) -> None:
    """Writes records as given (key, value, headers): an attacker's copies and replays."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value, headers in records:
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(go())


def raw(bootstrap: str, topic: str) -> list:
    """Every record of the topic as it is now (offsets are sparse after compaction, and
    transactions leave markers: read to the end offset, not to a count)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        await asyncio.sleep(0)  # aiokafka#647
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            out: list = []
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    out.extend(records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def version_of(record) -> int:
    import json

    return json.loads(record.value)["version"]


def test_copied_and_replayed_signed_records_change_nothing(kafka_bootstrap, start_worker, tmp_path):
    private, public, _ = keygen(tmp_path / "keys")
    signer = Signer.from_file(private)
    topics, kafka = make_topics(kafka_bootstrap, "replay")
    gmm = Publisher(kafka, topics.params, topics.history, "gmm", signer=signer)
    other = Publisher(kafka, topics.params, topics.history, "other", signer=signer)
    run = asyncio.run
    assert run(gmm.publish(model(), "trainer")).version == 1
    assert run(gmm.publish(model((3.0, 8.0)), "trainer", stage="candidate")).version == 2
    run(gmm.withdraw_candidate(2))  # rejected: a marker with version 2
    assert run(gmm.publish(model((4.0, 7.0)), "trainer", stage="candidate")).version == 3
    for _ in range(4):  # another name, further along: its marker says 5
        run(other.publish(model(), "trainer"))
    assert run(other.publish(model(), "trainer", stage="candidate")).version == 5
    run(other.withdraw_candidate(5))

    params = raw(kafka_bootstrap, topics.params)
    history = raw(kafka_bootstrap, topics.history)

    def on_params(key: bytes, version: int | None = None, marker: bool = False):
        found = [
            r
            for r in params
            if r.key == key
            and (b"withdrawn" in r.value) == marker
            and (version is None or (version_of(r) == version))
        ]
        return found[-1]

    candidate_3 = on_params(b"gmm@candidate", 3)
    candidate_2 = on_params(b"gmm@candidate", 2)
    gmm_marker_2 = on_params(b"gmm@candidate", 2, marker=True)
    other_marker = on_params(b"other@candidate", 5, marker=True)
    kept_candidate_3 = [r for r in history if r.key == b"gmm" and version_of(r) == 3][-1]

    worker = start_worker(topics, GMM_PARAMS_VERIFY_KEY=str(public))
    assert worker.wait_ready()["model_version"] == 1
    wait_for(lambda: worker.metric("gmm_candidate_version") == 3, 60, message="candidate 3")

    def rejected(reason: str) -> float:
        return worker.metric("gmm_params_rejected_total", reason=reason)

    write(
        kafka_bootstrap,
        topics.params,
        [
            # the candidate's signed record, under the served key (it would skip shadow)
            (b"gmm", candidate_3.value, list(candidate_3.headers)),
            # the same version from the history topic, where it is keyed by the name
            (b"gmm", kept_candidate_3.value, list(kept_candidate_3.headers)),
            # another name's marker, with a higher version, on gmm's candidate key
            (b"gmm@candidate", other_marker.value, list(other_marker.headers)),
            # gmm's own old marker and old candidate, replayed as they were
            (b"gmm@candidate", gmm_marker_2.value, list(gmm_marker_2.headers)),
            (b"gmm@candidate", candidate_2.value, list(candidate_2.headers)),
        ],
    )
    wait_for(
        lambda: rejected("bad_signature") == 3 and rejected("replayed") == 2,
        60,
        message="3 copies refused as badly signed, 2 replays refused",
    )
    assert worker.metric("gmm_model_version") == 1
    assert worker.metric("gmm_candidate_version") == 3

    # The publisher reads the same: served 1, candidate 3, highest 3 (not other's 5).
    served, candidate, highest = run(
        read_state(kafka, topics.params, "gmm", Verifier.from_files([public]))
    )
    assert (served.version, candidate.version, highest) == (1, 3, 3)
    assert run(gmm.publish(model((2.5, 9.5)), "trainer")).version == 4
    wait_for(lambda: worker.metric("gmm_model_version") == 4, 60, message="v4 served")
    wait_for(lambda: math.isnan(worker.metric("gmm_candidate_version")), 30, message="withdrawn")


def test_a_key_rotation_keeps_versions_rollback_and_shadow_going(
    kafka_bootstrap, start_worker, tmp_path
):
    """docs/security.md's rotation, step by step, with a worker and the trainer's publisher,
    `models` and `rollback`."""
    old_private, old_public, _ = keygen(tmp_path / "old")
    new_private, new_public, _ = keygen(tmp_path / "new")
    topics, kafka = make_topics(kafka_bootstrap, "rotate")
    base = TrainerSettings(
        kafka=kafka,
        params_topic=topics.params,
        history_topic=topics.history,
        model_name="gmm",
        params_signing_key=str(old_private),
    )
    run = asyncio.run
    before = Publisher.from_settings(base)
    assert [run(before.publish(model(), "trainer")).version for _ in range(2)] == [1, 2]

    # 1. Workers accept both keys.
    worker = start_worker(topics, GMM_PARAMS_VERIFY_KEY=f"{old_public},{new_public}")
    assert worker.wait_ready()["model_version"] == 2
    # 2. The trainer signs with the new key, and still reads the old key's records.
    rotated = dataclasses.replace(
        base, params_signing_key=str(new_private), params_verify_key=str(old_public)
    )
    after = Publisher.from_settings(rotated)
    assert run(after.publish(model((2.5, 9.5)), "trainer")).version == 3  # not 1
    wait_for(lambda: worker.metric("gmm_model_version") == 3, 60, message="v3 served")
    rolled = run(lifecycle.rollback(rotated, "gmm", 1))  # signed with the old key
    assert rolled.version == 4 and rolled.metadata.extra["rolled_back_from"] == 1
    wait_for(lambda: worker.metric("gmm_model_version") == 4, 60, message="v4 served")
    # Shadow mode keeps judging: the next candidate is newer than what is served.
    assert run(after.publish(model((3.0, 9.0)), "trainer", stage="candidate")).version == 5
    wait_for(lambda: worker.metric("gmm_candidate_version") == 5, 60, message="candidate 5")
    rows = run(lifecycle.list_versions(rotated, "gmm"))
    assert [(r.version, r.stage) for r in rows] == [
        (1, "retired"),
        (2, "retired"),
        (3, "retired"),
        (4, "serving"),
        (5, "candidate"),
    ]
    run(after.withdraw_candidate(5))
    wait_for(lambda: math.isnan(worker.metric("gmm_candidate_version")), 30, message="withdrawn")
    assert worker.metric("gmm_params_rejected_total") == 0

    # 3. Workers drop the old key: what is served is signed with the new one.
    worker.stop()
    worker = start_worker(topics, GMM_PARAMS_VERIFY_KEY=str(new_public))
    assert worker.wait_ready()["model_version"] == 4
    # Once the old key is no longer listed anywhere, its versions cannot be rolled back to.
    retired = dataclasses.replace(rotated, params_verify_key="")
    try:
        run(lifecycle.rollback(retired, "gmm", 1))
    except lifecycle.NoSuchVersion:
        pass
    else:
        raise AssertionError("rolled back to a version signed by a key no longer listed")
    assert run(lifecycle.rollback(retired, "gmm", 3)).version == 6
    wait_for(lambda: worker.metric("gmm_model_version") == 6, 60, message="v6 served")


def test_a_refused_record_left_last_on_its_key_does_not_outlive_compaction(
    kafka_bootstrap, tmp_path
):
    """Compaction keeps a key's last record only. A replayed old version (or old marker) left
    last on its key would, once compacted, be all a reader starting afresh sees; the trainer
    re-asserts the current records every cycle (`Publisher.reassert`), so compaction keeps
    those. Here the topic compacts as soon as its records are 20 s old (a lag long enough for
    the test to read them all first, on a loaded machine too), to show it end to end."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topics = Topics("compact")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    fast = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.001",
        "delete.retention.ms": "0",
        "min.compaction.lag.ms": "20000",
    }

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics.params, 1, 1, topic_configs=fast)])
        finally:
            await admin.close()
        await ensure_topics(kafka, [history_spec(topics.history)])

    run = asyncio.run
    run(create())
    private, public, _ = keygen(tmp_path / "keys")
    signer = Signer.from_file(private)
    gmm = Publisher(kafka, topics.params, topics.history, "gmm", signer=signer)
    assert [run(gmm.publish(model(), "trainer")).version for _ in range(2)] == [1, 2]
    assert run(gmm.publish(model((3.0, 8.0)), "trainer", stage="candidate")).version == 3
    run(gmm.withdraw_candidate(3))
    assert run(gmm.publish(model((4.0, 7.0)), "trainer", stage="candidate")).version == 4
    params = raw(kafka_bootstrap, topics.params)
    served_1, served_2 = [r for r in params if r.key == b"gmm"]
    marker_3 = next(r for r in params if r.key == b"gmm@candidate" and b"withdrawn" in r.value)
    write(
        kafka_bootstrap,
        topics.params,
        [
            # a copy of the current version with a header of the copier's (still verifies)
            (b"gmm", served_2.value, [*served_2.headers, ("pad", b"p" * 1000)]),
            (served_1.key, served_1.value, list(served_1.headers)),  # an old version, last
            (marker_3.key, marker_3.value, list(marker_3.headers)),  # an old marker, last
        ],
    )
    verifier = Verifier.from_files([public])
    assert run(gmm.reassert()) is True
    assert run(gmm.reassert()) is False  # the current records are last again: nothing to do
    last = {r.key: r for r in raw(kafka_bootstrap, topics.params)}
    assert last[b"gmm"].value == served_2.value
    assert list(last[b"gmm"].headers) == list(served_2.headers)  # the signature alone

    def compacted() -> bool:
        write(kafka_bootstrap, topics.params, [(b"roll", b"x", [])])  # rolls the segment
        keys = [r.key for r in raw(kafka_bootstrap, topics.params)]
        return keys.count(b"gmm") == 1 and keys.count(b"gmm@candidate") == 1

    wait_for(compacted, 150, interval=1.0, message="the params topic compacted")
    served, candidate, highest = run(read_state(kafka, topics.params, "gmm", verifier))
    assert (served.version, candidate.version, highest) == (2, 4, 4)
    assert run(gmm.publish(model(), "trainer")).version == 5
