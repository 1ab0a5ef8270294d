"""The notebook example runs as a user runs it: against the real broker and a real worker, it
fits, compares with scikit-learn, publishes through `gmm-trainer publish`, and sees the worker
assign new points as `predict` does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from kafka_common.params_topic import history_spec, params_spec
from kafka_common.settings import KafkaSettings
from kafka_common.topics import TopicSpec, ensure_topics
from support.harness import ROOT, Topics

EXAMPLE = ROOT / "examples" / "notebook_to_worker.py"


def test_notebook_example_publishes_and_the_worker_serves_it(
    kafka_bootstrap, start_worker, tmp_path
):
    topics = Topics("notebook")
    specs = [
        TopicSpec(topics.input, 2),
        TopicSpec(topics.output, 2),
        params_spec(topics.params),
        history_spec(topics.history),
    ]
    asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=kafka_bootstrap), specs))
    worker = start_worker(topics)
    worker.wait_serving()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "GMM_INPUT_TOPIC": topics.input,
        "GMM_OUTPUT_TOPIC": topics.output,
        "GMM_PARAMS_TOPIC": topics.params,
        "GMM_HISTORY_TOPIC": topics.history,
        "GMM_EVENTS_TOPIC": topics.events,
    }
    run = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker.log_tail()
    out = run.stdout
    assert "K=2 by BIC" in out
    assert "published 'gmm' version 1 as served" in run.stderr + out
    assert "the worker served 'gmm' version 1 to 300 of 300 new points" in out
    assert "equal predict()" in out
    assert worker.metric("gmm_model_version") == 1
