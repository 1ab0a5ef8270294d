"""The trainer's run loop with reader processes (GMM_TRAIN_READERS=2): after each cycle the
next read's readers wait (trainer.reader_pool), each cycle takes them, none outlives the
trainer."""

from __future__ import annotations

from support.harness import Topics, TrainerProcess, produce, trainer_env, wait_for
from tests.conftest import window_readers_of
from tests.integration.trainer.test_lifecycle import make_topics
from tests.integration.trainer.test_trainer import bimodal


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_each_cycle_takes_the_readers_started_after_the_last(kafka_bootstrap, tmp_path):
    topics = Topics("reader-pool")
    make_topics(kafka_bootstrap, topics)  # an input topic of 2 partitions: one per reader
    produce(kafka_bootstrap, topics.input, bimodal(2000, prefix="r"))
    env = trainer_env(
        kafka_bootstrap,
        topics,
        tmp_path / "r",
        GMM_TRAIN_READERS="2",
        GMM_TRAIN_INTERVAL_SECONDS="1",
        GMM_TRAINER_METRICS_PORT="0",
    )
    log = tmp_path / "trainer.log"
    trainer = TrainerProcess(env, log)
    seen: list[set[int]] = []

    def new_standby_set() -> bool:
        assert trainer.alive(), log.read_text()[-2000:]
        waiting = set(window_readers_of(trainer.proc.pid))
        if len(waiting) == 2 and (not seen or not waiting & seen[-1]):
            seen.append(waiting)
        return len(seen) >= 3

    try:
        # Three sets in turn: each cycle took the waiting readers (they read, then exit) and
        # the run loop started the next cycle's.
        wait_for(new_standby_set, 180, message="readers waiting after three cycles")
        for earlier in seen[:-1]:
            assert not any(_running(pid) for pid in earlier)
        # And the cycles' reads took them (a read that started its own would not say so).
        wait_for(
            lambda: log.read_text().count("the read takes 2 waiting window readers") >= 2,
            60,
            message="two reads that took waiting readers",
        )
    finally:
        trainer.stop()
    # The trainer stopped by SIGTERM: its waiting readers' stdin ended, and they exited.
    standby = seen[-1] if seen else set()
    wait_for(lambda: not any(_running(pid) for pid in standby), 30, message="no reader left behind")
