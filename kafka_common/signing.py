"""Signed models: Ed25519 signatures over params records, carried in a record header.

Defence in depth beside the broker's ACLs: a worker that verifies installs only models signed by
a trainer's key, so a principal that can write the params topic (a mistaken ACL, a stolen
password) still cannot make workers serve its model.

- The trainer holds the private key (GMM_PARAMS_SIGNING_KEY, a PEM file) and signs each params
  record: the signed bytes are `wire.params_record.signed_message(role, key, value)` (the topic
  it is written to, the key and the value), so a signature holds for that record only, and the
  JSON is unchanged: readers that do not verify read it as before.
- The signature (64 raw bytes) travels in the record header `gmm-signature` (HEADER; the
  record's format, headers included, is `wire.params_record`).
- Every reader that verifies (workers, the publisher, `gmm-trainer models` and `rollback`)
  holds public keys (GMM_PARAMS_VERIFY_KEY: one PEM file, or several separated by commas while
  keys rotate) and accepts a record whose signature verifies under any of them.

    python -m kafka_common.signing keygen --out DIR   # DIR/params-signing.pem, params-verify.pem

Built on the `cryptography` package's Ed25519 (OpenSSL), not hand-rolled.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pathlib
import sys
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kafka_common.settings import SettingsError
from wire.params_record import SIGNATURE_HEADER, signature_headers, signature_of, signed_message

#: The Kafka record header that carries a params record's signature (64 raw bytes).
HEADER = SIGNATURE_HEADER
SIGNATURE_BYTES = 64
#: keygen's file names.
PRIVATE_FILE = "params-signing.pem"
PUBLIC_FILE = "params-verify.pem"


class KeyFileError(SettingsError):
    """A key file that cannot be read or is not an Ed25519 key; the message is one line that
    names the variable and the file."""


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short id of a public key for logs and the rotation steps in docs/security.md: the
    first 16 hex digits of the SHA-256 of its 32 raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _kind(key: object) -> str:
    """'an RSA', 'an EC', 'a DSA', 'an Ed448'...: the algorithm of a key of the wrong kind."""
    name = type(key).__name__.lstrip("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return f"{'an' if name[:1] in 'AEIOURSX' else 'a'} {name}"


def _read(path: str | os.PathLike[str], variable: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{variable}={str(path)!r} cannot be read: {exc.strerror}") from None


@dataclasses.dataclass(frozen=True)
class Signer:
    """The trainer's side: signs params record values with one private key."""

    key: Ed25519PrivateKey

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], variable: str = "GMM_PARAMS_SIGNING_KEY"
    ) -> Signer:
        """Loads an unencrypted PEM (PKCS#8) Ed25519 private key, as keygen writes it."""
        data = _read(path, variable)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            reason = "it is encrypted" if "encrypted" in str(exc).lower() else "not a PEM key"
            raise KeyFileError(
                f"{variable}={str(path)!r} is not an unencrypted Ed25519 private key ({reason})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(
                f"{variable}={str(path)!r} holds {_kind(key)} key, not an Ed25519 private key"
            )
        return cls(key)

    @property
    def key_id(self) -> str:
        return fingerprint(self.key.public_key())

    def sign(self, message: bytes) -> bytes:
        """The signature (64 bytes) of exactly these bytes."""
        return self.key.sign(message)

    def headers(self, key: bytes, value: bytes, role: str = "params") -> list[tuple[str, bytes]]:
        """The headers that carry a params record's signature (for AIOKafkaProducer.send)."""
        return signature_headers(role, key, value, self)


@dataclasses.dataclass(frozen=True)
class Verifier:
    """The workers' side: accepts a value whose signature verifies under any of its public keys
    (several while keys rotate)."""

    keys: tuple[Ed25519PublicKey, ...]

    @classmethod
    def from_files(
        cls,
        paths: str | Sequence[str | os.PathLike[str]],
        variable: str = "GMM_PARAMS_VERIFY_KEY",
    ) -> Verifier:
        """Loads PEM Ed25519 public keys: a sequence of paths, or one string of paths separated
        by commas (GMM_PARAMS_VERIFY_KEY)."""
        if isinstance(paths, str):
            paths = [p.strip() for p in paths.split(",") if p.strip()]
        if not paths:
            raise KeyFileError(f"{variable} names no key file")
        keys = []
        for path in paths:
            data = _read(path, variable)
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError):
                raise KeyFileError(
                    f"{variable}={str(path)!r} is not an Ed25519 public key (not a PEM public key)"
                ) from None
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFileError(
                    f"{variable}={str(path)!r} holds {_kind(key)} key, not an Ed25519 public key"
                )
            keys.append(key)
        return cls(tuple(keys))

    @property
    def key_ids(self) -> list[str]:
        return [fingerprint(k) for k in self.keys]

    def verify(self, message: bytes, signature: bytes | None) -> bool:
        """True if `signature` is a valid signature of exactly `message` under one of the keys;
        False for a missing, malformed or wrong signature and for a changed message."""
        if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_BYTES:
            return False
        for key in self.keys:
            try:
                key.verify(bytes(signature), message)
                return True
            except InvalidSignature:
                continue
        return False

    def verify_record(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] | None,
        role: str = "params",
    ) -> bool:
        """Whether a consumed params record (aiokafka's ConsumerRecord key, value and headers)
        was signed as it is, on the topic of `role`: verify() of its `signed_message` and the
        HEADER among its headers. No value, no signature or two signatures: False."""
        if value is None:
            return False
        return self.verify(signed_message(role, key, value), signature_of(headers))

    def including(self, others: Verifier | None) -> Verifier:
        """These keys and `others`' (duplicates dropped), e.g. the signer's own and the listed."""
        keys = list(self.keys)
        ids = set(self.key_ids)
        for key in others.keys if others is not None else ():
            if fingerprint(key) not in ids:
                keys.append(key)
                ids.add(fingerprint(key))
        return Verifier(tuple(keys))


def keygen(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, str]:
    """Writes a new key pair into `out` (the private key readable by its owner only); refuses
    to overwrite one. Returns (private path, public path, key id)."""
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / PRIVATE_FILE, out / PUBLIC_FILE
    for path in (private, public):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public, fingerprint(key.public_key())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kafka_common.signing",
        description="Keys for signed models (docs/security.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="write a new Ed25519 key pair")
    gen.add_argument("--out", required=True, type=pathlib.Path, help="directory for the keys")
    show = sub.add_parser("fingerprint", help="print the key id of PEM keys (public or private)")
    show.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        if args.command == "keygen":
            private, public, key_id = keygen(args.out)
            print(f"{private}  private: the trainer's GMM_PARAMS_SIGNING_KEY (keep it secret)")
            print(f"{public}  public: the workers' GMM_PARAMS_VERIFY_KEY")
            print(f"key id {key_id}")
        else:
            for path in args.paths:
                data = _read(path, "key file")
                if b"PRIVATE KEY" in data:
                    key_id = Signer.from_file(path, "key file").key_id
                else:
                    key_id = Verifier.from_files([path], "key file").key_ids[0]
                print(f"{key_id}  {path}")
    except (KeyFileError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
