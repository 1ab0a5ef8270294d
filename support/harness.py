"""Helpers for the integration tests and the benchmarks: real worker processes, real topics,
waiting on conditions."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from kafka_common.topics import topic_partitions
from mixture.params import FitMetadata, MixtureParams, ModelParams

# The repository root (support/ sits at its top), for deploy/kafka/kafka.sh.
ROOT = pathlib.Path(__file__).resolve().parents[1]

SEED_MODEL = ModelParams(
    1,
    MixtureParams([0.375, 0.625], [[0.49894], [10.98446]], [0.651434]),
    FitMetadata(fitted_at="2026-01-01T00:00:00+00:00", n_points=5),
)


#: The kernel's range of ephemeral ports (Linux's default where it cannot be read).
try:
    EPHEMERAL = tuple(
        int(v) for v in pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
except (OSError, ValueError):
    EPHEMERAL = (32768, 60999)
#: Where servers started by tests listen: below the ephemeral range when it leaves room.
SERVER_PORTS = (20000, EPHEMERAL[0]) if EPHEMERAL[0] > 21000 else (1024, EPHEMERAL[0])


def free_port() -> int:
    """A port nothing listens on, for a server a test starts. Not from the ephemeral range
    (where binding port 0 draws): any outgoing connection of the run (thousands, from every
    test process) may take such a port between this check and the server's own bind, and a
    broker that lost its port that way failed a whole test file's set-up."""
    rng = random.Random()  # pytest-xdist's processes must not draw the same sequence
    for _ in range(1000):
        port = rng.randrange(*SERVER_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS}")


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    """Polls condition() until it returns a truthy value; fails the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Topics:
    """A test's own set of worker topics."""

    def __init__(self, stem: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.input = f"it.{stem}.{tag}.points"
        self.output = f"it.{stem}.{tag}.assignments"
        self.params = f"it.{stem}.{tag}.params"
        self.history = f"it.{stem}.{tag}.history"
        self.events = f"it.{stem}.{tag}.events"
        self.dlq = f"it.{stem}.{tag}.deadletter"
        self.group = f"it-{stem}-{tag}"


def delete_topics(bootstrap: str, topics: Topics) -> None:
    """Deletes every topic of `topics`, the ones its services made included (a Faust app's
    own topics are named after the group); a benchmark calls it after each run, so the broker
    is the same size for every system it measures. Tidying only: a failure is printed."""

    async def delete() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            prefix = topics.input.rsplit(".", 1)[0] + "."
            names = [
                name
                for name in await admin.list_topics()
                if name.startswith((prefix, f"{topics.group}-"))
            ]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    try:
        run(delete())
    except Exception as exc:
        print(f"could not delete the topics of {topics.group}: {exc}", file=sys.stderr)


class Worker:
    """A `gmm-worker` process on the test's topics, with its own web port and log file."""

    def __init__(self, bootstrap: str, topics: Topics, log_dir: pathlib.Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"worker-{self.port}.log"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "GMM_INPUT_TOPIC": topics.input,
            "GMM_OUTPUT_TOPIC": topics.output,
            "GMM_PARAMS_TOPIC": topics.params,
            "GMM_EVENTS_TOPIC": topics.events,
            "GMM_DLQ_TOPIC": topics.dlq,
            "GMM_CONSUMER_GROUP": topics.group,
            "GMM_WORKER_WEB_PORT": str(self.port),
            "GMM_WORKER_WEB_HOST": "127.0.0.1",
            "GMM_WORKER_DATA_DIR": str(log_dir / f"data-{self.port}"),
            "GMM_INPUT_PARTITIONS": "2",
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app.main"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready_status(self) -> int:
        self.check_alive()
        return self.get("/ready")[0]

    def wait_ready(self, timeout: float = 120) -> dict:
        wait_for(lambda: self.ready_status() == 200, timeout, message="worker /ready")
        return json.loads(self.get("/ready")[1])

    def wait_serving(self, timeout: float = 120) -> None:
        """Up (answers /health), with or without a model."""

        def up() -> bool:
            self.check_alive()
            return self.get("/health")[0] == 200

        wait_for(up, timeout, message="worker /health")

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(
                f"worker exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}"
            )

    def metrics_text(self) -> str:
        return self.get("/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def publish_model(bootstrap: str, topic: str, model: ModelParams, name: str = "gmm") -> None:
    """Writes `model` as is (its own version, no compare-and-set) under key `name`: a test
    stands in for a publisher, or for an attacker."""
    run(_produce(bootstrap, topic, [(name.encode(), model.dumps().encode())]))


async def _produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    run(_produce(bootstrap, topic, items))


async def _consume(bootstrap: str, topic: str, n: int, timeout: float) -> list:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    # aiokafka#647: a consumer stopped before its no-group task first ran raises CancelledError.
    await asyncio.sleep(0)
    try:
        out: list = []
        if n <= 0:
            return out
        deadline = time.monotonic() + timeout
        # The topic may not exist yet (a worker creates its topics once it has started): wait
        # for it within the same deadline, and say so if it never appears, rather than
        # returning nothing after the whole timeout.
        tps: list = []
        while not tps and time.monotonic() < deadline:
            tps = await topic_partitions(consumer, topic, wait_s=2)
        if not tps:
            raise AssertionError(f"topic {topic!r} did not appear within {timeout:.0f} s")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(out) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


def consume(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list:
    """Reads topic from the beginning until n records arrived or timeout (then returns fewer);
    AssertionError if the topic does not exist within the timeout."""
    return run(_consume(bootstrap, topic, n, timeout))


async def _end_offsets(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    # aiokafka#647: a consumer stopped before its no-group task first ran raises CancelledError.
    await asyncio.sleep(0)
    try:
        tps = await topic_partitions(consumer, topic, wait_s=10)
        if not tps:
            return 0
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


def count_records(bootstrap: str, topic: str) -> int:
    """Records in topic (sum of end offsets; the test topics are never truncated)."""
    return run(_end_offsets(bootstrap, topic))


def _segments(bootstrap: str, topic: str, partition: int | None = None) -> list[pathlib.Path]:
    """The log segment files of a topic's partition (None: of every partition) in the data
    directory of a broker of deploy/kafka/kafka.sh."""
    port = bootstrap.rsplit(":", 1)[1]
    data = pathlib.Path(os.environ.get("KAFKA_STATE_DIR", ROOT / ".kafka" / port)) / "data"
    pattern = f"{topic}-{'*' if partition is None else partition}/*.log"
    segments = sorted(data.glob(pattern))
    if not segments:
        raise AssertionError(f"no log segment {pattern} under {data}")
    return segments


def topic_log_bytes(bootstrap: str, topic: str) -> int:
    """Bytes the broker stores for a topic's records (every partition's log segments)."""
    return sum(path.stat().st_size for path in _segments(bootstrap, topic))


def batch_codecs(bootstrap: str, topic: str, partition: int = 0) -> list[str]:
    """The compression codec of each record batch of a partition, as the broker stored it (its
    own log dump tool on the broker's data directory; a broker of deploy/kafka/kafka.sh)."""
    segments = _segments(bootstrap, topic, partition)
    dump = subprocess.run(
        [
            *(
                "java",
                "-cp",
                str(pathlib.Path(os.environ.get("KAFKA_LIBS_DIR", ROOT / ".kafka" / "libs")) / "*"),
                "kafka.tools.DumpLogSegments",
            ),
            *("--files", ",".join(map(str, segments))),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return re.findall(r"isControl: false .*?compresscodec: (\w+)", dump.stdout)


class Broker:
    """A broker of a test's own (deploy/kafka/kafka.sh on a free port pair), for faults and auth.

    extra_props may name {port} (the client listener), {cport} (the controller's) and
    {port:NAME} (another listener's, a free port of its own, then in `ports[NAME]`)."""

    def __init__(
        self, state_dir: pathlib.Path, extra_props: str = "", client_props: str = ""
    ) -> None:
        self.script = ROOT / "deploy" / "kafka" / "kafka.sh"
        self.port = free_port_pair()
        self.bootstrap = f"127.0.0.1:{self.port}"
        state_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_STATE_DIR": str(state_dir)}
        #: Further listeners' ports: each `{port:NAME}` in extra_props gets a free port of its own.
        self.ports: dict[str, int] = {}
        if extra_props:
            for name in re.findall(r"\{port:(\w+)\}", extra_props):
                while name not in self.ports:
                    port = free_port()
                    if port not in (self.port, self.port + 1, *self.ports.values()):
                        self.ports[name] = port
                extra_props = extra_props.replace(f"{{port:{name}}}", str(self.ports[name]))
            path = state_dir / "extra.properties"
            path.write_text(
                extra_props.replace("{port}", str(self.port)).replace("{cport}", str(self.port + 1))
            )
            self.env["KAFKA_EXTRA_PROPS"] = str(path)
        if client_props:
            path = state_dir / "client.properties"
            path.write_text(client_props)
            self.env["KAFKA_CLIENT_PROPS"] = str(path)

    def _run(self, command: str) -> None:
        done = subprocess.run(
            ["bash", str(self.script), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise AssertionError(f"kafka.sh {command} failed: {done.stdout}{done.stderr}")

    def up(self) -> Broker:
        self._run("up")
        return self

    def _signal(self, sig: int) -> None:
        pid = int((pathlib.Path(self.env["KAFKA_STATE_DIR"]) / "broker.pid").read_text())
        os.kill(pid, sig)

    def pause(self) -> None:
        """Freezes the broker (SIGSTOP): connections stay open and nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def down(self) -> None:
        self._run("down")


def free_port_pair() -> int:
    """Two free consecutive ports (a broker's client and controller listeners)."""
    for _ in range(100):
        port = free_port()
        if port + 1 >= SERVER_PORTS[1]:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def trainer_env(
    bootstrap: str, topics: Topics, reports: pathlib.Path, **extra: str
) -> dict[str, str]:
    """Environment of a trainer process on the test's topics (small windows, few restarts)."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "GMM_INPUT_TOPIC": topics.input,
        "GMM_PARAMS_TOPIC": topics.params,
        "GMM_HISTORY_TOPIC": topics.history,
        "GMM_EVENTS_TOPIC": topics.events,
        "GMM_REPORTS_DIR": str(reports),
        "GMM_TRAIN_WINDOW_RECORDS": "2000",
        "GMM_TRAIN_RESTARTS": "10",
        **extra,
    }


def run_trainer_once(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`gmm-trainer run --once ARGS` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", "run", "--once", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


class TrainerProcess:
    """`gmm-trainer run` in the background, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: pathlib.Path) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.cli", "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


async def _create_worker_topics(
    bootstrap: str, topics: Topics, partitions: int, configs: dict[str, dict[str, str]]
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        specs = [
            (topics.input, partitions, {}),
            (topics.output, partitions, {}),
            (topics.dlq, 1, {}),
            (topics.params, 1, {"cleanup.policy": "compact"}),
        ]
        await admin.create_topics(
            [
                NewTopic(name, n, 1, topic_configs={**base, **configs.get(name, {})})
                for name, n, base in specs
            ]
        )
    finally:
        await admin.close()


def create_worker_topics(
    bootstrap: str, topics: Topics, partitions: int = 2, **configs: dict[str, str]
) -> None:
    """Creates the worker's topics ahead of it, with per-topic configs by attribute name:
    `create_worker_topics(b, topics, dlq={"max.message.bytes": "1500"})`."""
    by_name = {getattr(topics, attr): config for attr, config in configs.items()}
    run(_create_worker_topics(bootstrap, topics, partitions, by_name))
