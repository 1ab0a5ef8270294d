"""The worker's per-backend sizes: its slice and the classifier's padding, unless set."""

from __future__ import annotations

import pytest

from kafka_common.settings import SettingsError
from mixture.classify import default_sizes
from stream_app import settings as settings_module
from stream_app.settings import SLICE_RECORDS_ACCELERATOR, SLICE_RECORDS_CPU, WorkerSettings


def test_on_a_cpu_a_batch_is_one_slice_and_the_padding_stays_as_it_was():
    s = WorkerSettings.from_env({})
    assert settings_module.jax_backend() == "cpu"  # the tests run on JAX's CPU backend
    assert s.slice_records == 0 and s.slice_size == s.max_batch == 1024
    assert WorkerSettings.from_env({"GMM_MAX_BATCH": "4096"}).slice_size == 4096
    assert WorkerSettings.from_env({"GMM_MAX_BATCH": "256"}).slice_size == 256
    # a larger batch: slices of 4,096, so the event loop turns at least that often
    assert WorkerSettings.from_env({"GMM_MAX_BATCH": "65536"}).slice_size == SLICE_RECORDS_CPU
    assert SLICE_RECORDS_CPU == 4096
    assert s.classifier_sizes is None  # the classifier's default for the backend
    assert default_sizes(s.max_batch) == (16, 64, 256, 1024)


def test_on_a_gpu_slices_and_the_smallest_padding_are_larger(monkeypatch):
    monkeypatch.setattr(settings_module, "jax_backend", lambda: "gpu")
    assert WorkerSettings.from_env({}).slice_size == SLICE_RECORDS_ACCELERATOR == 1024
    assert WorkerSettings.from_env({"GMM_MAX_BATCH": "512"}).slice_size == 512  # capped
    assert default_sizes(1024, "gpu") == (256, 1024)
    assert default_sizes(4096, "gpu") == (256, 1024, 4096)
    assert default_sizes(100, "gpu") == (100,)


def test_settings_override_the_backend(monkeypatch):
    monkeypatch.setattr(settings_module, "jax_backend", lambda: "gpu")
    s = WorkerSettings.from_env({"GMM_SLICE_RECORDS": "64", "GMM_PAD_SIZES": "64, 16,4096"})
    assert s.slice_size == 64
    assert s.classifier_sizes == (16, 64, 4096)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GMM_SLICE_RECORDS": "-1"}, "GMM_SLICE_RECORDS must be >= 1, or 0"),
        ({"GMM_PAD_SIZES": "16,x"}, "GMM_PAD_SIZES must be auto or positive integers"),
        ({"GMM_PAD_SIZES": "0,16"}, "GMM_PAD_SIZES must be auto or positive integers"),
    ],
)
def test_bad_sizes_name_their_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_env(env)
