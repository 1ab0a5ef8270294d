"""Fixtures for tests against the real Apache Kafka broker (never a mock).

The broker is the one `make kafka-up` started; if none answers, the run starts it with the
same script and stops it again at the end. Every test gets topics of its own, so the tests run
in parallel processes (pytest-xdist) on the one broker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from filelock import FileLock

from tests.conftest import KAFKA_SCRIPT, STARTED_BROKER, shared_tmp


def run_sync(coro):  # type: ignore[no-untyped-def]
    """Runs a coroutine to completion on a fresh loop in a helper thread.

    Fixtures use it so they work for sync and async tests alike (an async test already
    owns the current thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _broker_answers(bootstrap: str) -> bool:
    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.describe_cluster()
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    return bool(run_sync(probe()))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of a running broker; starts one with deploy/kafka/kafka.sh if needed.

    Under pytest-xdist every worker process has this fixture: a file lock in the run's shared
    temporary directory lets one of them start the broker and the others find it running. The
    run's main process stops a broker the run started, once every worker is done
    (tests/conftest.py, pytest_unconfigure)."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    shared = shared_tmp()
    with FileLock(shared / "kafka-broker.lock"):
        if not _broker_answers(bootstrap):
            port = bootstrap.rsplit(":", 1)[1]
            # Written before the start, so that a broker left half-started is stopped too.
            (shared / STARTED_BROKER).write_text(port)
            env = {**os.environ, "KAFKA_PORT": port}
            subprocess.run(["bash", str(KAFKA_SCRIPT), "up"], check=True, env=env)
    return bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: `new_topic("points", partitions=4, compact=False)` creates a unique topic."""
    created: list[str] = []

    def make(stem: str = "t", partitions: int = 1, compact: bool = False) -> str:
        name = f"test.{stem}.{uuid.uuid4().hex[:10]}"
        run_sync(create_topic(kafka_bootstrap, name, partitions, compact))
        created.append(name)
        return name

    yield make
    if created:
        run_sync(delete_topics(kafka_bootstrap, created))


async def create_topic(
    bootstrap: str, name: str, partitions: int = 1, compact: bool = False
) -> None:
    configs = {"cleanup.policy": "compact"} if compact else {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=configs)]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    except Exception:  # cleanup only: a topic already gone is fine
        pass
    finally:
        await admin.close()


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Keeps each phase's report on the test item, so fixtures can tell whether it failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def start_worker(kafka_bootstrap, tmp_path, request):
    """Factory: start_worker(topics, **env) -> a running gmm-worker; all are stopped afterwards.

    When the test failed, each worker's log tail is printed, so CI's report shows what the
    worker was doing (the log files themselves stay on the machine that ran the test)."""
    from support.harness import Worker

    workers: list = []

    def start(topics, **env):
        worker = Worker(kafka_bootstrap, topics, tmp_path, **env).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    call = getattr(request.node, "report_call", None)
    if call is not None and call.failed:
        for worker in workers:
            print(f"--- {worker.log_path.name} (last 80 lines) ---\n{worker.log_tail(80)}")
