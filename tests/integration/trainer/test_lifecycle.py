"""The model lifecycle against the real broker: names, compare-and-set versions, history,
rollback, and a first model without waiting for the interval."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from numpy.testing import assert_allclose

from kafka_common.params_topic import (
    Publisher,
    StaleState,
    history_spec,
    params_spec,
    read_all,
    read_newest,
    read_state,
)
from kafka_common.settings import KafkaSettings
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import (
    Topics,
    TrainerProcess,
    consume,
    produce,
    publish_model,
    trainer_env,
    wait_for,
)
from tests.integration.trainer.test_trainer import bimodal
from trainer.lifecycle import rollback
from trainer.settings import TrainerSettings


def model(locs=(2.0, 9.0), version: int = 0) -> ModelParams:
    return ModelParams(
        version,
        MixtureParams([0.3, 0.7], [[locs[0]], [locs[1]]], [1.0]),
        FitMetadata(fitted_at="2026-11-28T00:00:00+00:00", n_points=100),
    )


def kafka(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap)


def publisher_of(bootstrap: str, topics: Topics, name: str = "gmm") -> Publisher:
    """The publisher of `name` that a trainer on the test's topics builds."""
    settings = TrainerSettings(
        kafka=kafka(bootstrap), params_topic=topics.params, history_topic=topics.history
    )
    return Publisher.from_settings(settings, name)


def make_topics(bootstrap: str, topics: Topics) -> None:
    specs = [params_spec(topics.params), history_spec(topics.history)]
    asyncio.run(ensure_topics(kafka(bootstrap), [TopicSpec(topics.input, 2), *specs]))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_names_share_one_params_topic(kafka_bootstrap, start_worker, tmp_path):
    topics = Topics("names")
    make_topics(kafka_bootstrap, topics)
    # b is newer (version 7) and published last: a worker of a must not serve it.
    publish_model(kafka_bootstrap, topics.params, model((2.0, 9.0), 1), name="a")
    publish_model(kafka_bootstrap, topics.params, model((100.0, 200.0), 7), name="b")
    worker_a = start_worker(topics, GMM_MODEL_NAME="a")
    worker_b = start_worker(topics, GMM_MODEL_NAME="b", GMM_CONSUMER_GROUP=topics.group + "-b")
    assert worker_a.wait_ready()["model"] == "a"
    assert worker_a.wait_ready()["model_version"] == 1
    assert worker_b.wait_ready()["model_version"] == 7

    # A record keyed b that claims to be a different model is refused.
    bad = model((0.0, 1.0), 8)
    bad = ModelParams(8, bad.mixture, FitMetadata(extra={"model_name": "a"}), bad.covariance)
    publish_model(kafka_bootstrap, topics.params, bad, name="b")
    wait_for(
        lambda: worker_b.metric("gmm_params_rejected_total", reason="name_mismatch") == 1,
        30,
        message="name mismatch counted",
    )
    # Each name's versions go on by themselves, compare-and-set.
    publisher = publisher_of(kafka_bootstrap, topics, "a")
    assert asyncio.run(publisher.publish(model((2.5, 9.5)), "cli")).version == 2
    wait_for(lambda: worker_a.metric("gmm_model_version") == 2, 30, message="a v2 served")
    assert worker_b.metric("gmm_model_version") == 7

    produce(kafka_bootstrap, topics.input, bimodal(50, prefix="n"))
    outs = [json.loads(r.value) for r in consume(kafka_bootstrap, topics.output, 100, timeout=60)]
    # Both workers share the output topic here; each assignment names its model.
    assert len(outs) == 100
    assert {(d["model"], d["model_version"]) for d in outs} == {("a", 2), ("b", 7)}


def test_concurrent_publishers_never_share_a_version(kafka_bootstrap, tmp_path):
    topics = Topics("cas")
    make_topics(kafka_bootstrap, topics)
    env = trainer_env(kafka_bootstrap, topics, tmp_path / "r")
    data = tmp_path / "points.jsonl"
    data.write_text("".join(json.dumps({"x": x}) + "\n" for x in [0, 1, 0.5, 10, 11, 10.5] * 10))
    publishers = [publisher_of(kafka_bootstrap, topics) for _ in range(4)]

    async def race() -> list[ModelParams]:
        # A CLI process (`fit --publish`) and four in-process publishers, all at once.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trainer.cli",
            "fit",
            "--data",
            str(data),
            "--restarts",
            "4",
            "--out",
            str(tmp_path / "p.json"),
            "--publish",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        ours = await asyncio.gather(
            *(p.publish(model((2.0, 9.0 + i)), "trainer") for i, p in enumerate(publishers))
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        return list(ours)

    ours = asyncio.run(race())
    history = asyncio.run(read_all(kafka(kafka_bootstrap), topics.history, "gmm"))
    versions = sorted(m.version for m in history)
    assert versions == [1, 2, 3, 4, 5]  # five publications, five distinct versions, no gaps
    assert sorted(m.version for m in ours) == sorted(
        m.version for m in history if m.metadata.extra["published_by"] == "trainer"
    )
    assert [m.metadata.extra["published_by"] for m in history].count("cli") == 1
    newest = asyncio.run(read_newest(kafka(kafka_bootstrap), topics.params, "gmm"))
    assert newest is not None and newest.version == 5


def test_history_and_rollback_served(kafka_bootstrap, start_worker, tmp_path, record_property):
    topics = Topics("rollback")
    make_topics(kafka_bootstrap, topics)
    env = trainer_env(kafka_bootstrap, topics, tmp_path / "r")
    publisher = publisher_of(kafka_bootstrap, topics)
    asyncio.run(publisher.publish(model((2.0, 9.0)), "trainer"))
    asyncio.run(publisher.publish(model((40.0, 50.0)), "trainer"))
    worker = start_worker(topics)
    assert worker.wait_ready()["model_version"] == 2

    listed = cli(env, "models", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["version"], r["stage"], r["published_by"]) for r in rows] == [
        (1, "retired", "trainer"),
        (2, "serving", "trainer"),
    ]
    assert rows[0]["points"] == 100 and rows[0]["fitted_at"] == "2026-11-28T00:00:00+00:00"

    started = time.monotonic()
    rolled = cli(env, "rollback", "--to", "1")
    assert rolled.returncode == 0, rolled.stderr
    wait_for(lambda: worker.metric("gmm_model_version") == 3, 30, message="rollback served")
    served_after = time.monotonic() - started
    record_property("rollback_to_served_seconds", round(served_after, 3))
    print(f"rollback to served: {served_after:.2f} s (CLI process start included)")

    newest = asyncio.run(read_newest(kafka(kafka_bootstrap), topics.params, "gmm"))
    assert newest is not None and newest.version == 3
    assert newest.metadata.extra["rolled_back_from"] == 1
    assert newest.metadata.extra["published_by"] == "rollback"
    assert_allclose(newest.mixture.locs, [[2.0], [9.0]])
    table = cli(env, "models")
    assert table.returncode == 0 and "rollback (from v1)" in table.stdout

    # From the rollback's publication (in process: no CLI start-up) to the worker serving it.
    settings = TrainerSettings.from_env(env)
    again = asyncio.run(rollback(settings, "gmm", 2))
    committed = time.monotonic()
    wait_for(lambda: worker.metric("gmm_model_version") == 4, 30, 0.02, message="v4 served")
    served_after = time.monotonic() - committed
    record_property("rollback_publication_to_served_seconds", round(served_after, 3))
    print(f"rollback publication to served: {served_after:.3f} s")
    assert again.version == 4 and again.metadata.extra["rolled_back_from"] == 2

    # No such version: one line, non-zero, nothing published.
    missing = cli(env, "rollback", "--to", "9")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no version 9" in missing.stderr
    history = asyncio.run(read_all(kafka(kafka_bootstrap), topics.history, "gmm"))
    assert [m.version for m in history] == [1, 2, 3, 4]


def test_a_params_file_serves_as_version_zero(kafka_bootstrap, start_worker, tmp_path):
    topics = Topics("file0")
    make_topics(kafka_bootstrap, topics)
    path = tmp_path / "params.json"
    path.write_text(model((2.0, 9.0), version=5).dumps())  # its own version does not count
    worker = start_worker(topics, GMM_PARAMS_FILE=str(path))
    assert worker.wait_ready()["model_version"] == 0
    publisher = publisher_of(kafka_bootstrap, topics)
    assert asyncio.run(publisher.publish(model((3.0, 9.0)), "cli")).version == 1
    wait_for(lambda: worker.metric("gmm_model_version") == 1, 30, message="topic v1 served")


def test_first_model_does_not_wait_for_the_interval(kafka_bootstrap, tmp_path):
    topics = Topics("first")
    make_topics(kafka_bootstrap, topics)
    env = trainer_env(
        kafka_bootstrap,
        topics,
        tmp_path / "r",
        GMM_TRAIN_INTERVAL_SECONDS="600",
        GMM_FIRST_MODEL_RETRY_SECONDS="1",
        GMM_TRAINER_METRICS_PORT="0",
    )
    trainer = TrainerProcess(env, tmp_path / "trainer.log")
    try:
        log = tmp_path / "trainer.log"
        wait_for(lambda: "too_few_points" in log.read_text(), 120, message="a rejected cycle")
        produce(kafka_bootstrap, topics.input, bimodal(2000, prefix="f"))
        produced = time.monotonic()

        def published() -> bool:
            assert trainer.alive(), log.read_text()[-2000:]
            newest = asyncio.run(read_newest(kafka(kafka_bootstrap), topics.params, "gmm"))
            return newest is not None

        wait_for(published, 90, message="a first model well before the 600 s interval")
        print(f"first model {time.monotonic() - produced:.1f} s after the data arrived")
    finally:
        trainer.stop()


def test_a_served_publication_withdraws_the_candidate(kafka_bootstrap, tmp_path):
    """A rollback (or any served publication) supersedes a candidate in shadow, so that a
    promotion judged against the old served version cannot undo it; versions never repeat,
    even after the candidate key is withdrawn."""
    topics = Topics("supersede")
    make_topics(kafka_bootstrap, topics)
    k = kafka(kafka_bootstrap)
    publisher = publisher_of(kafka_bootstrap, topics)
    asyncio.run(publisher.publish(model((2.0, 9.0)), "trainer"))  # v1 served
    candidate = asyncio.run(publisher.publish(model((2.5, 9.5)), "trainer", stage="candidate"))
    assert candidate.version == 2
    assert asyncio.run(read_state(k, topics.params, "gmm"))[1].version == 2

    settings = TrainerSettings.from_env(trainer_env(kafka_bootstrap, topics, tmp_path / "r"))
    assert asyncio.run(rollback(settings, "gmm", 1)).version == 3
    served, pending, highest = asyncio.run(read_state(k, topics.params, "gmm"))
    assert served.version == 3 and pending is None and highest == 3
    with pytest.raises(StaleState):  # the trainer's promotion of v2, judged against v1
        asyncio.run(publisher.publish(candidate, "trainer", expect=(1, 2)))
    with pytest.raises(StaleState):
        asyncio.run(publisher.withdraw_candidate(2))
    # A rejected candidate's number is not taken again (the marker keeps it).
    rejected = asyncio.run(publisher.publish(model((3.0, 9.0)), "trainer", stage="candidate"))
    asyncio.run(publisher.withdraw_candidate(rejected.version))
    assert asyncio.run(publisher.publish(model((2.0, 9.0)), "cli")).version == rejected.version + 1
