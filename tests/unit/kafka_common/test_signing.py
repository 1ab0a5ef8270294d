"""Signed models: Ed25519 over the exact record value, the signature in a record header."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kafka_common.settings import SettingsError
from kafka_common.signing import (
    HEADER,
    PRIVATE_FILE,
    PUBLIC_FILE,
    KeyFileError,
    Signer,
    Verifier,
    keygen,
    main,
)
from mixture.params import ModelParams
from support.harness import SEED_MODEL
from wire.params_record import signature_of

VALUE = SEED_MODEL.dumps().encode()


@pytest.fixture
def keys(tmp_path):
    private, public, key_id = keygen(tmp_path / "keys")
    return Signer.from_file(private), Verifier.from_files(str(public)), key_id


def test_round_trip(keys):
    signer, verifier, key_id = keys
    signature = signer.sign(VALUE)
    assert len(signature) == 64
    assert verifier.verify(VALUE, signature)
    assert signer.key_id == key_id == verifier.key_ids[0]
    # The value is unchanged: a reader that does not verify reads the same model.
    assert ModelParams.loads(VALUE).dumps() == SEED_MODEL.dumps()


def test_the_signature_travels_in_a_header(keys):
    signer, verifier, _ = keys
    headers = signer.headers(b"gmm", VALUE)
    assert [name for name, _ in headers] == [HEADER] == ["gmm-signature"]
    assert verifier.verify_record(b"gmm", VALUE, headers)
    assert verifier.verify_record(b"gmm", VALUE, [("other", b"x"), *headers])
    assert signature_of(headers) == headers[0][1]


def test_a_signature_holds_for_its_key_and_topic_only(keys):
    """Copied under another key (the served key, another name's) or onto the other topic,
    a signed value no longer verifies."""
    signer, verifier, _ = keys
    headers = signer.headers(b"gmm@candidate", VALUE)
    assert verifier.verify_record(b"gmm@candidate", VALUE, headers)
    assert not verifier.verify_record(b"gmm", VALUE, headers)
    assert not verifier.verify_record(b"other@candidate", VALUE, headers)
    assert not verifier.verify_record(b"gmm@candidate", VALUE, headers, role="history")
    kept = signer.headers(b"gmm", VALUE, role="history")
    assert verifier.verify_record(b"gmm", VALUE, kept, role="history")
    assert not verifier.verify_record(b"gmm", VALUE, kept)  # history onto the params topic


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v.replace(b'"version": 1', b'"version": 2'),
        lambda v: v + b" ",
        lambda v: v[:-1],
        lambda v: b"",
    ],
    ids=["version", "trailing-space", "truncated", "empty"],
)
def test_a_tampered_value_fails(keys, tamper):
    signer, verifier, _ = keys
    tampered = tamper(VALUE)
    assert tampered != VALUE
    assert not verifier.verify(tampered, signer.sign(VALUE))


def test_a_tampered_signature_fails(keys):
    signer, verifier, _ = keys
    signature = bytearray(signer.sign(VALUE))
    signature[10] ^= 1
    assert not verifier.verify(VALUE, bytes(signature))


def test_another_key_fails(keys, tmp_path):
    _, verifier, _ = keys
    private, _, _ = keygen(tmp_path / "attacker")
    assert not verifier.verify(VALUE, Signer.from_file(private).sign(VALUE))


@pytest.mark.parametrize("signature", [None, b"", b"\0" * 64, b"x" * 63, "not bytes"])
def test_unsigned_or_malformed_fails(keys, signature):
    _, verifier, _ = keys
    assert not verifier.verify(VALUE, signature)


def test_unsigned_records_fail(keys):
    signer, verifier, _ = keys
    assert not verifier.verify_record(b"gmm", VALUE, [])
    assert not verifier.verify_record(b"gmm", VALUE, None)
    assert not verifier.verify_record(b"gmm", None, signer.headers(b"gmm", VALUE))
    # Two signature headers: ambiguous, refused even if one is right.
    assert not verifier.verify_record(b"gmm", VALUE, signer.headers(b"gmm", VALUE) * 2)
    assert signature_of(signer.headers(b"gmm", VALUE) * 2) is None


def test_several_verify_keys_for_rotation(tmp_path):
    old_private, old_public, _ = keygen(tmp_path / "old")
    new_private, new_public, _ = keygen(tmp_path / "new")
    both = Verifier.from_files(f"{old_public}, {new_public}")
    for private in (old_private, new_private):
        assert both.verify(VALUE, Signer.from_file(private).sign(VALUE))
    only_new = Verifier.from_files([new_public])
    assert not only_new.verify(VALUE, Signer.from_file(old_private).sign(VALUE))
    both_again = only_new.including(Verifier.from_files([old_public, new_public]))
    assert both_again.key_ids == [only_new.key_ids[0], both.key_ids[0]]
    assert only_new.including(None) == only_new


def test_keygen_files(tmp_path):
    private, public, _ = keygen(tmp_path)
    assert (private.name, public.name) == (PRIVATE_FILE, PUBLIC_FILE)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"PRIVATE" not in public.read_bytes()
    with pytest.raises(FileExistsError):
        keygen(tmp_path)  # never overwrites a key


def test_keygen_cli(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "kafka_common.signing", "keygen", "--out", str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    key_id = done.stdout.split("key id ")[1].strip()
    assert Signer.from_file(tmp_path / "k" / PRIVATE_FILE).key_id == key_id
    again = subprocess.run(
        [sys.executable, "-m", "kafka_common.signing", "keygen", "--out", str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert len(again.stderr.strip().splitlines()) == 1 and "exists" in again.stderr


def test_fingerprint_cli(tmp_path, capsys):
    private, public, key_id = keygen(tmp_path)
    assert main(["fingerprint", str(private), str(public)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [key_id, key_id]


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "cannot be read: No such file or directory"),
        (b"not a key\n", "not an unencrypted Ed25519 private key (not a PEM key)"),
        (
            _ec_key().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "holds an EC key, not an Ed25519 private key",
        ),
        (
            _ec_key().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "(it is encrypted)",
        ),
    ],
    ids=["missing", "garbage", "ec-key", "encrypted"],
)
def test_bad_signing_key_file_is_one_line(tmp_path, content, expect):
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        Signer.from_file(path)
    message = str(info.value)
    assert isinstance(info.value, SettingsError)
    assert "\n" not in message
    assert message.startswith(f"GMM_PARAMS_SIGNING_KEY={str(path)!r}")
    assert expect in message


def test_bad_verify_key_files_are_one_line(tmp_path):
    private, public, _ = keygen(tmp_path)
    cases = {
        f"{public},{tmp_path / 'missing.pem'}": "cannot be read",
        str(private): "not an Ed25519 public key",
        " , ": "names no key file",
    }
    ec_public = tmp_path / "ec.pem"
    ec_public.write_bytes(
        _ec_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cases[str(ec_public)] = "holds an EC key, not an Ed25519 public key"
    for paths, expect in cases.items():
        with pytest.raises(KeyFileError) as info:
            Verifier.from_files(paths)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith("GMM_PARAMS_VERIFY_KEY")
        assert expect in str(info.value), str(info.value)
