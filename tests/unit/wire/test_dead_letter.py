"""The dead-letter record: bounded payloads, refused stand-ins, and strict decoding."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from wire import dead_letter
from wire.common import KeyCut, WireError

SOURCE = {"topic": "points", "partition": 0, "offset": 9}


def test_a_large_payload_keeps_its_size_digest_and_first_bytes():
    payload = "é".encode() * 3000  # 6000 bytes; the cut falls inside a character
    letter = dead_letter.decode(
        dead_letter.encode("oversized", "too big", SOURCE, 1.0, payload, 101)
    )
    assert letter["payload_size"] == 6000
    assert letter["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert letter["payload_truncated"] is True
    assert dead_letter.payload_prefix(letter) == payload[:101]
    assert letter["payload_text"] == "é" * 50  # the cut character is dropped from the text
    assert letter["source"] == SOURCE and letter["reason"] == "oversized"


def test_a_small_binary_payload_travels_whole_without_text():
    letter = dead_letter.decode(dead_letter.encode("not_json", "e", SOURCE, None, b"\xff\x00", 64))
    assert dead_letter.payload_prefix(letter) == b"\xff\x00"
    assert letter["payload_truncated"] is False and letter["payload_text"] is None


def test_a_refused_letter_carries_no_payload_but_the_original_reason_and_key_cut():
    refused = b"x" * 5000
    value = dead_letter.encode_refused(
        "output_too_large", "e" * 900, SOURCE, 2.0, refused, "not_json", KeyCut(10_000, "cd")
    )
    letter = dead_letter.decode(value)
    assert letter["payload_size"] == 5000 and letter["payload_base64"] == ""
    assert letter["original_reason"] == "not_json" and len(letter["error"]) == 500
    assert letter["key_size"] == 10_000 and letter["key_truncated"] is True


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"reason": "x"}, "missing 'error'"),
        ({"payload_base64": "!!"}, "not base64"),
        ({"payload_base64": base64.b64encode(b"abc").decode(), "payload_size": 2}, "more payload"),
        ({"source": None}, "'source' must be an object"),
        ({"payload_truncated": 1}, "'payload_truncated' must be bool"),
    ],
)
def test_malformed_letters_are_refused_with_the_reason(doc, message):
    good = orjson.loads(dead_letter.encode("not_json", "e", SOURCE, None, b"ab", 64))
    bad = {**good, **doc} if "reason" not in doc else doc
    with pytest.raises(WireError, match=message):
        dead_letter.decode(orjson.dumps(bad))
