"""Trainer settings: shared Kafka variables, its own validation."""

from __future__ import annotations

import pytest

from kafka_common.settings import SettingsError
from trainer.settings import TrainerSettings


def test_defaults_and_shared_variables():
    s = TrainerSettings.from_env({"GMM_INPUT_TOPIC": "in", "KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert (s.input_topic, s.kafka.servers, s.components, s.needed_points) == (
        "in",
        ["h:1"],
        "2",
        20,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GMM_COMPONENTS": "0"}, "GMM_COMPONENTS must be an integer >= 1 or auto"),
        ({"GMM_COMPONENTS": "many"}, "GMM_COMPONENTS must be an integer >= 1 or auto"),
        ({"GMM_COVARIANCE": "banded"}, "must be one of"),
        ({"GMM_REG_COVAR": "-1"}, "GMM_REG_COVAR must be in"),
        ({"GMM_MAX_COMPONENTS": "0"}, "GMM_MAX_COMPONENTS must be >= 1"),
        ({"GMM_COMPONENTS": "5", "GMM_TRAIN_WINDOW_RECORDS": "3"}, "cannot fit GMM_COMPONENTS=5"),
        ({"GMM_TRAIN_INTERVAL_SECONDS": "0"}, "must be > 0"),
        ({"GMM_PER_COMPONENT_SCALE": "maybe"}, "is not a valid bool"),
        ({"GMM_TRAIN_EXPLORE_EVERY": "-1"}, "GMM_TRAIN_EXPLORE_EVERY must be >= 0"),
        ({"GMM_TRAIN_RESTARTS": "0"}, "GMM_TRAIN_RESTARTS must be >= 1"),
        ({"GMM_TRAIN_DEVICES": "-1"}, "GMM_TRAIN_DEVICES must be >= 0"),
        ({"GMM_TRAIN_READERS": "0"}, "GMM_TRAIN_READERS must be >= 1"),
    ],
)
def test_bad_settings(env, message):
    with pytest.raises(SettingsError, match=message):
        TrainerSettings.from_env(env)


def test_covariance_and_auto_components():
    s = TrainerSettings.from_env({"GMM_COMPONENTS": "auto", "GMM_COVARIANCE": "full"})
    assert (s.n_components, s.fit_covariance, s.needed_points) == (None, "full", 80)
    older = TrainerSettings.from_env({"GMM_PER_COMPONENT_SCALE": "true"})
    assert (older.n_components, older.fit_covariance) == (2, "diag")
