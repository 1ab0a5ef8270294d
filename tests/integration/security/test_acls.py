"""ACLs on a real broker: KRaft's StandardAuthorizer denies what no ACL allows, each service logs
in as its own user, and the ACLs are the ones deploy/compose/kafka-secure.sh grants in the secure
stack. With them the whole stream works; a producer (or a worker) that tries to publish a model
is refused and no worker installs anything; a worker short of an ACL says which, in one line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.protocol.admin import CreateAclsRequest

from kafka_common.params_topic import stamped
from kafka_common.settings import KafkaSettings
from support.harness import (
    SEED_MODEL,
    Broker,
    Topics,
    Worker,
    run_trainer_once,
    trainer_env,
    wait_for,
)
from support.security import (
    OPERATIONS,
    RESOURCE_TYPES,
    SCRAM,
    AdminTools,
    client_props,
    parse_acl_line,
    plain_jaas,
    secure_acl_lines,
    service_env,
    settings_of,
    stack_topics,
)

pytestmark = pytest.mark.slow

ADMIN = ("admin", "admin-secret")  # the broker's super user
# PLAIN users are the broker's JAAS list; the trainer is a SCRAM-SHA-512 user, created through the
# broker's admin API once it runs.
PLAIN_USERS = {"admin": "admin-secret", "worker": "worker-secret", "producer": "producer-secret"}
SCRAM_USERS = {"trainer": "trainer-secret"}

BROKER_PROPS = f"""
listeners=SASL_PLAINTEXT://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{cport}}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{{port}}
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={plain_jaas(*ADMIN, PLAIN_USERS)}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={SCRAM};
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain_jaas(*ADMIN, {ADMIN[0]: ADMIN[1]})}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
"""


@dataclasses.dataclass
class Secured:
    broker: Broker
    admin: AdminTools

    def env(self, user: str) -> dict[str, str]:
        if user in SCRAM_USERS:
            return service_env(
                self.broker.bootstrap, "SASL_PLAINTEXT", user, SCRAM_USERS[user], "SCRAM-SHA-512"
            )
        return service_env(self.broker.bootstrap, "SASL_PLAINTEXT", user, PLAIN_USERS[user])

    def kafka(self, user: str) -> KafkaSettings:
        return settings_of(self.env(user))

    def stack(self, stem: str) -> Topics:
        """A fresh set of topics, created by the super user, with the secure stack's ACLs."""
        topics = Topics(stem)
        self.admin.create_topics(stack_topics(topics))
        self.admin.add_lines(secure_acl_lines(topics))
        return topics


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    broker = Broker(
        tmp_path_factory.mktemp("acls") / "broker", BROKER_PROPS, client_props(*ADMIN)
    ).up()
    try:
        admin_env = service_env(broker.bootstrap, "SASL_PLAINTEXT", *ADMIN)
        admin = AdminTools(broker, settings_of(admin_env))
        for name, password in SCRAM_USERS.items():
            admin.scram_user("SCRAM-SHA-512", name, password)
        yield Secured(broker, admin)
    finally:
        broker.down()


def run_module(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=180
    )


def produce_points(secured: Secured, topics: Topics, count: int) -> None:
    done = run_module(
        ["producer.cli", "--topic", topics.input, "--count", str(count)],
        {
            **trainer_env(secured.broker.bootstrap, topics, pathlib.Path()),
            **secured.env("producer"),
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]


def train_once(secured: Secured, topics: Topics, reports: pathlib.Path) -> int:
    env = trainer_env(secured.broker.bootstrap, topics, reports, **secured.env("trainer"))
    done = run_trainer_once(env)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(json.loads(done.stdout.splitlines()[-1])["version"])


@pytest.fixture(scope="module")
def served(secured, tmp_path_factory):
    """The secure stack's topics and ACLs, 2000 points from the producer, a model from the
    trainer (SCRAM-SHA-512, transactional), and a worker serving it."""
    tmp = tmp_path_factory.mktemp("served")
    topics = secured.stack("acl")
    produce_points(secured, topics, 2000)
    assert train_once(secured, topics, tmp / "reports") == 1
    worker = Worker(secured.broker.bootstrap, topics, tmp, **secured.env("worker")).start()
    try:
        assert worker.wait_ready(120)["model_version"] == 1
        yield topics, worker, tmp
    finally:
        worker.stop()


async def _read(kafka: KafkaSettings, topic: str, n: int, timeout: float = 30) -> list:
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka#647
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        for _ in range(50):
            if parts:
                break
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def _end_offset(kafka: KafkaSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**kafka.client_options())
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka#647
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


def test_with_the_acls_the_whole_stream_works(secured, served):
    topics, worker, _ = served
    before = worker.metric("gmm_assignments_out_total")
    produce_points(secured, topics, 500)
    wait_for(
        lambda: worker.metric("gmm_assignments_out_total") >= before + 500,
        60,
        message="500 more assignments",
    )
    # What the worker wrote, read back by the super user: classified by the trainer's model.
    out = asyncio.run(_read(secured.admin.kafka, topics.output, 2500))
    assert len(out) >= 2500
    assert {json.loads(r.value)["model_version"] for r in out} == {1}
    assert worker.metric("gmm_dead_letters_total") == 0


async def _publish_as(kafka: KafkaSettings, topic: str, value: bytes, **options: object) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", **options)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"gmm")
    finally:
        await producer.stop()


def _attacker_model() -> bytes:
    """A model that would send every point to component 0, as a higher version than any."""
    return stamped(SEED_MODEL.with_version(1000), "gmm", "trainer").dumps().encode()


def test_a_producer_cannot_publish_a_model(secured, served):
    topics, worker, tmp = served
    version = worker.metric("gmm_model_version")
    offsets = asyncio.run(_end_offset(secured.admin.kafka, topics.params))
    value = _attacker_model()

    # The producer principal, straight to the params topic: refused by the broker.
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_publish_as(secured.kafka("producer"), topics.params, value))
    # ... or to the history topic, for a later rollback to pick up.
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_publish_as(secured.kafka("producer"), topics.history, value))
    # ... or as the trainer's transactional publisher (which would also fence the trainer).
    with pytest.raises(TransactionalIdAuthorizationFailed):
        asyncio.run(
            _publish_as(
                secured.kafka("producer"),
                topics.params,
                value,
                transactional_id="gmm-params-publisher-gmm",
            )
        )
    # A worker's credentials are no better: workers read models, they do not write them.
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_publish_as(secured.kafka("worker"), topics.params, value))

    # Nothing reached the topic, and the worker serves what it served.
    assert asyncio.run(_end_offset(secured.admin.kafka, topics.params)) == offsets
    time.sleep(3)
    assert worker.metric("gmm_model_version") == version
    assert worker.metric("gmm_model_version") != 1000

    # The control: the trainer's next model is installed, so the worker was listening.
    assert train_once(secured, topics, tmp / "reports") == version + 1
    wait_for(
        lambda: worker.metric("gmm_model_version") == version + 1, 30, message="trainer's model"
    )


async def _create_acl_as(kafka: KafkaSettings, principal: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        response = await admin._send_request(
            CreateAclsRequest(
                RESOURCE_TYPES["--topic"], topic, 3, principal, "*", OPERATIONS["write"], 3
            )
        )
        return int(response.creation_responses[0][0])
    finally:
        await admin.close()


async def _fetch_as(kafka: KafkaSettings, topic: str, seconds: float = 5.0) -> list:
    """What fetching partition 0 from the start returns within `seconds`: the first records,
    or nothing for the whole time (aiokafka logs each refusal)."""
    consumer = AIOKafkaConsumer(
        **kafka.client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    quiet = logging.getLogger("aiokafka")
    level, quiet.level = quiet.level, logging.CRITICAL
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka#647
    try:
        consumer.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            records = [record for records in batch.values() for record in records]
            if records:
                return records
        return []
    finally:
        await consumer.stop()
        quiet.setLevel(level)


async def _join_group_as(kafka: KafkaSettings, topic: str, group: str) -> None:
    consumer = AIOKafkaConsumer(topic, **kafka.client_options(), group_id=group)
    try:
        await consumer.start()
        # The refusal comes with the join, which a loaded broker may take seconds to answer.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=1000)
    finally:
        await consumer.stop()


def test_other_principals_are_refused_what_is_not_theirs(secured, served):
    topics, worker, _ = served
    producer = secured.kafka("producer")
    # Reading what others wrote, the models and the assignments: the broker answers every fetch
    # "not authorized", and nothing arrives (the super user, the control, reads them).
    for topic in (topics.params, topics.output):
        assert asyncio.run(_fetch_as(producer, topic)) == []
        assert asyncio.run(_fetch_as(secured.admin.kafka, topic, seconds=30)) != []
    # Joining the workers' group to take their partitions (and skip records).
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(_join_group_as(producer, topics.input, topics.group))
    # Granting itself Write on the params topic: CLUSTER_AUTHORIZATION_FAILED (31).
    assert asyncio.run(_create_acl_as(producer, "User:producer", topics.params)) == 31
    # The trainer writes models but may not assign points: no group of its own on the input.
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(_join_group_as(secured.kafka("trainer"), topics.input, topics.group))
    assert worker.alive()


@pytest.mark.parametrize(
    ("acl", "words"),
    [
        ("--operation Read --topic {params}", ["read topic", "{params}", "GMM_PARAMS_TOPIC"]),
        ("--operation Write --topic {output}", ["write topic", "{output}", "GMM_OUTPUT_TOPIC"]),
        ("--operation Read --group {group}", ["read group", "'{group}'", "GMM_CONSUMER_GROUP"]),
    ],
    ids=["read-params", "write-assignments", "read-group"],
)
def test_a_worker_without_an_acl_says_which_in_one_line(secured, tmp_path, acl, words):
    topics = secured.stack("aclmiss")
    names = {"params": topics.params, "output": topics.output, "group": topics.group}
    removed = secured.admin.remove(
        parse_acl_line(f"--allow-principal User:worker {acl.format(**names)}")
    )
    assert removed == 1
    worker = Worker(secured.broker.bootstrap, topics, tmp_path, **secured.env("worker"))
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.main"],
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("gmm-worker: error: not authorized: user 'worker' may not ")
    for word in words:
        assert word.format(**names) in lines[0], lines[0]


def test_a_trainer_without_its_transactional_id_says_so(secured, tmp_path):
    topics = secured.stack("acltxn")
    produce_points(secured, topics, 200)
    grant = parse_acl_line(
        "--allow-principal User:trainer --operation Write --resource-pattern-type prefixed "
        "--transactional-id gmm-params-publisher-"
    )
    assert secured.admin.remove(grant) == 1
    try:
        env = trainer_env(secured.broker.bootstrap, topics, tmp_path, **secured.env("trainer"))
        done = run_trainer_once(env)
    finally:
        secured.admin.add(grant)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("gmm-trainer: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "transactional id 'gmm-params-publisher-gmm'" in errors[0]
    assert "Traceback" not in done.stderr
    assert asyncio.run(_end_offset(secured.admin.kafka, topics.params)) == 0
