"""Authenticated events: Ed25519 signatures over events records, carried in a record header.

Workers' `shadow` reports decide promotions and their `drift` alarms start refits, so a
principal that can write the events topic (any worker's credentials) could otherwise promote or
reject any candidate and force refits. With keys configured the trainer acts only on events
that a listed worker key signed (`trainer.events`):

- each worker signs every event it sends with its private key (GMM_EVENTS_SIGNING_KEY);
- the trainer lists the workers' public keys (GMM_EVENTS_VERIFY_KEY, comma-separated) and
  learns from the signature which key vouches for a report (its `fingerprint`).

The signed message is `message(key, value)`: a domain tag, the record key (length-prefixed)
and the record value (`wire.common.signed_bytes`, as for params records behind their own tag),
so an event signature never passes for a params record's nor for another model's record. The
signature (64 raw bytes) travels in the header HEADER; the value is unchanged, so readers that
do not verify read it as before. Keys are plain Ed25519 keys (`python -m kafka_common.signing
keygen --out DIR` makes a pair); sign and verify are `kafka_common.signing`'s.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

from kafka_common.signing import Signer, Verifier, fingerprint
from wire.common import signed_bytes, single_header

#: The Kafka record header that carries an event's signature (64 raw bytes).
HEADER = "gmm-event-signature"
#: What every signed event message starts with (never the start of a params record's JSON).
DOMAIN = b"gmm-event/1\x00"


def message(key: bytes, value: bytes) -> bytes:
    """The bytes signed for an events record (`wire.common.signed_bytes` behind DOMAIN)."""
    return signed_bytes(DOMAIN, key, value)


def signature_of(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The record's event signature header, or None (unsigned, or more than one)."""
    return single_header(headers, HEADER)


@dataclasses.dataclass(frozen=True)
class EventSigner:
    """A worker's side: signs the events records it sends with one private key."""

    signer: Signer

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EventSigner:
        """Loads GMM_EVENTS_SIGNING_KEY (a PEM Ed25519 private key); KeyFileError if bad."""
        return cls(Signer.from_file(path, "GMM_EVENTS_SIGNING_KEY"))

    @property
    def key_id(self) -> str:
        return self.signer.key_id

    def headers(self, key: bytes, value: bytes) -> list[tuple[str, bytes]]:
        """The record headers that carry the signature of (key, value)."""
        return [(HEADER, self.signer.sign(message(key, value)))]


@dataclasses.dataclass(frozen=True)
class EventVerifier:
    """The trainer's side: which listed worker key, if any, signed an events record."""

    verifiers: tuple[tuple[str, Verifier], ...]  # (key id, a verifier of that key alone)

    @classmethod
    def from_files(cls, paths: str | Sequence[str | os.PathLike[str]]) -> EventVerifier:
        """Loads GMM_EVENTS_VERIFY_KEY: PEM Ed25519 public keys (a sequence of paths, or one
        string of paths separated by commas); KeyFileError if one is bad or none is named."""
        keys = Verifier.from_files(paths, "GMM_EVENTS_VERIFY_KEY").keys
        return cls(tuple((fingerprint(k), Verifier((k,))) for k in keys))

    @property
    def key_ids(self) -> list[str]:
        return [key_id for key_id, _ in self.verifiers]

    def signer_of(
        self, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None
    ) -> str | None:
        """The key id of the listed key whose signature the record carries, or None: no
        value, no signature (or two), or one that no listed key verifies for this key and
        value."""
        signature = signature_of(headers)
        if value is None or signature is None:
            return None
        signed = message(key or b"", value)
        for key_id, verifier in self.verifiers:
            if verifier.verify(signed, signature):
                return key_id
        return None
