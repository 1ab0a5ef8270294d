"""Decoding params-topic records: whatever a record holds, the reader skips it or loads it, and
never raises (one poisoned record would stop every reader of the topic at the same offset)."""

from __future__ import annotations

import json

import pytest

from kafka_common.params_topic import WITHDRAWN_SCHEMA, _decode, _withdrawn_version

GOOD = {"schema": "gmm-params/1", "version": 3, "weights": [1.0], "locs": [0.0], "scale": 1.0}


@pytest.mark.parametrize(
    "value",
    [
        b'{"schema": "gmm-params/1", "version": 1, "weights": [1' + b"0" * 400 + b'], "locs": '
        b'[0.0], "scale": 1.0}',
        b'{"weights": ' + b"[" * 50000 + b"]" * 50000 + b"}",
        b"[1, 2, 3]",
        b"\xff\xfe\x00",
        b'{"schema": "gmm-params/1", "version": 1, "weights": [true], "locs": [0], "scale": 1}',
    ],
    ids=["huge-integer", "deep-nesting", "not-an-object", "not-utf8", "boolean-weight"],
)
def test_a_poisoned_record_is_skipped_and_reported(value):
    rejected = []
    model = _decode(b"gmm", value, "gmm", lambda reason, why: rejected.append(reason))
    assert model is None
    assert len(rejected) == 1


def test_a_valid_record_loads():
    model = _decode(b"gmm", json.dumps(GOOD).encode(), "gmm", None)
    assert model is not None and model.version == 3


@pytest.mark.parametrize(
    ("value", "version"),
    [
        (json.dumps({"schema": WITHDRAWN_SCHEMA, "version": 4}).encode(), 4),
        (json.dumps([WITHDRAWN_SCHEMA]).encode(), None),
        (json.dumps(WITHDRAWN_SCHEMA).encode(), None),
        (b'{"x": "' + WITHDRAWN_SCHEMA.encode() + b'", "y": ' + b"[" * 50000, None),
        (None, None),
    ],
    ids=["marker", "list", "string", "deep", "tombstone"],
)
def test_withdrawal_markers_are_recognised_or_ignored(value, version):
    assert _withdrawn_version(value) == version
