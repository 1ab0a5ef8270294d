"""`gmm-worker` before any network: --help and --version, and bad settings as one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Nothing listens here: a command that touched the network would hang or fail.
NO_BROKER = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def worker(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_app.main", *args],
        env={**os.environ, **NO_BROKER, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_touch_no_network(flag):
    done = worker(flag, GMM_MAX_BATCH="not a number")  # nor the settings
    assert done.returncode == 0, done.stderr
    assert "gmm-worker" in done.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("{not json", "is not a valid model: not valid JSON"),
        ('{"schema": "gmm-params/1", "version": 1}', "is not a valid model"),
    ],
)
def test_a_bad_params_file_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "params.json"
    if content is not None:
        path.write_text(content)
    done = worker(GMM_PARAMS_FILE=str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmm-worker: error: GMM_PARAMS_FILE=")
    assert message in lines[0]


def test_importing_the_app_builds_nothing():
    code = (
        "import threading, stream_app.app as m, stream_app.agents, stream_app.views;"
        "assert 'app' not in vars(m); print(threading.active_count())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # no executor, client or app was started


def test_a_quiet_log_level_leaves_debug_records_unbuilt():
    # Faust's terminal spinner set the root logger to DEBUG at `warn`, so every aiokafka debug
    # call on the hot path built a record. The worker's Faust worker has no spinner.
    code = (
        "import logging, faust, stream_app.app as m;"
        "app = faust.App('t', autodiscover=False, Worker=m.FaustWorker);"
        "w = app.conf.Worker(app, loglevel='warn');"
        "root = logging.getLogger(); root.addHandler(logging.NullHandler());"
        "w.on_setup_root_logger(root, logging.WARNING);"
        "print(w.spinner, logging.getLogger('aiokafka.consumer.fetcher').isEnabledFor(10))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "False"]
