"""The params record: a model as a Kafka record on the params and history topics.

The one definition of what a published model looks like as a record, for its writer (the
publisher in `kafka_common.params_topic`, used by the trainer and the CLI) and its readers (the
workers, the trainer, `gmm-trainer models`). Publishing, following and reading the topics is
Kafka's side: `kafka_common.params_topic`. The value is the model's own JSON
(`mixture.params.ModelParams.to_json`), which this module builds on.

- Key: the model name (UTF-8), for a served version; `<name>@candidate` for a candidate scored
  in shadow (`@` is not allowed in names). On the history topic every version is keyed by the
  name.
- Value: the model's JSON, stamped in its metadata with the name it is published under
  (`model_name`), who published it (`published_by`), its `stage` and any provenance.
- Headers: none, or a signature (`gmm-signature`, 64 raw bytes) when the publisher signs
  (`kafka_common.signing`). What is signed is `signed_message(topic role, key, value)`: the
  role ("params" or "history"), the key (the model name and, through `@candidate`, the stage)
  and the value (the model with its version, name and stage, or a marker with its name and
  version). A signature therefore holds only for the record it was made for: the same value
  copied under another key (a candidate under the served key, one name's marker under
  another's), or from the history topic onto the params topic, no longer verifies.
- A withdrawal marker on the candidate key, `{"schema": "gmm-candidate-withdrawn/1",
  "name": N, "version": V}`, says no candidate is in shadow any more (V: the highest version
  taken then). Not a tombstone: compaction keeps it, and with it the highest version.

A reader decodes a record for the name it serves (`decode`): another name's record is nothing
to it, and one of its own that does not hold a valid model of that name, at the stage its key
says, is refused with a `ParamsError` whose `reason` is counted. Which records are replays
(an old marker, an old candidate) is `NameState`'s to say: versions only ever increase.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from mixture.params import ModelParams, ParamsError
from wire.common import signed_bytes, single_header

#: The record header that carries a signature of the value.
SIGNATURE_HEADER = "gmm-signature"

#: Who published a version (metadata.published_by).
PUBLISHERS = ("trainer", "cli", "rollback")

#: metadata.stage of a version: served when published, or a candidate scored in shadow.
STAGES = ("served", "candidate")

#: The schema of a withdrawal marker on the candidate key.
WITHDRAWN_SCHEMA = "gmm-candidate-withdrawn/1"

#: The topics a params record is written to; a signature names the one it was made for.
ROLES = ("params", "history")
#: Domain separation: no other signed message of the service starts with these bytes.
SIGNED_PREFIX = b"gmm-params-record/2\x00"

Headers = list[tuple[str, bytes]]


class Signs(Protocol):
    """What signs a message (`kafka_common.signing.Signer`)."""

    def sign(self, message: bytes) -> bytes: ...


class ParamsRecord(NamedTuple):
    """A record to write: its key, value and headers (None: unsigned)."""

    key: bytes
    value: bytes
    headers: Headers | None


class ParamsUpdate(NamedTuple):
    """What a record says about one model name.

    stage: "served" or "candidate" (the key it came on). model: the model; None on the candidate
    key when the candidate was withdrawn (a marker, or a tombstone). withdrawn_at: a withdrawal
    marker's version (the highest taken when it was written), else None.
    """

    stage: str
    model: ModelParams | None
    withdrawn_at: int | None = None

    @property
    def taken(self) -> int | None:
        """The version the record shows taken (the model's, or the marker's); None if none."""
        return self.model.version if self.model is not None else self.withdrawn_at


def candidate_key(name: str) -> str:
    """The params topic key of the name's candidate in shadow."""
    return f"{name}@candidate"


def key_of(name: str, stage: str) -> bytes:
    """The params topic key of a version of `name` at `stage` (one of STAGES)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return (name if stage == "served" else candidate_key(name)).encode()


def stage_of(key: bytes | None, name: str) -> str | None:
    """The stage a record keyed `key` is about for model name `name`; None if another name's."""
    if key == name.encode():
        return "served"
    if key == candidate_key(name).encode():
        return "candidate"
    return None


def stamped(model: ModelParams, name: str, published_by: str, **extra: object) -> ModelParams:
    """The model with its name and publisher (and any extra provenance) in its metadata."""
    if published_by not in PUBLISHERS:
        raise ValueError(f"published_by must be one of {PUBLISHERS}, got {published_by!r}")
    meta = model.metadata
    meta = dataclasses.replace(
        meta, extra={**meta.extra, "model_name": name, "published_by": published_by, **extra}
    )
    return dataclasses.replace(model, metadata=meta)


def signed_message(role: str, key: bytes | None, value: bytes) -> bytes:
    """The bytes a params record's signature covers: the topic role, the key and the value,
    each delimited (the key by its length), behind SIGNED_PREFIX."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return signed_bytes(SIGNED_PREFIX + role.encode() + b"\x00", key or b"", value)


def signature_headers(role: str, key: bytes, value: bytes, signer: Signs) -> Headers:
    """The headers of a signed record: the signature of `signed_message(role, key, value)`."""
    return [(SIGNATURE_HEADER, signer.sign(signed_message(role, key, value)))]


def _headers(role: str, key: bytes, value: bytes, signer: Signs | None) -> Headers | None:
    return None if signer is None else signature_headers(role, key, value, signer)


def signature_of(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The record's signature header, or None (unsigned, or more than one)."""
    return single_header(headers, SIGNATURE_HEADER)


def encode(
    model: ModelParams,
    name: str,
    stage: str = "served",
    signer: Signs | None = None,
    role: str = "params",
) -> ParamsRecord:
    """The record of `model` (stamped and versioned already) as a version of `name` at `stage`;
    signed if `signer` is given. On the params topic (role "params") the key says the stage;
    on the history topic (role "history") every stage goes under the name."""
    value = model.dumps().encode()
    key = key_of(name, stage if role == "params" else "served")
    return ParamsRecord(key, value, _headers(role, key, value, signer))


class Marker(NamedTuple):
    """A withdrawal marker: the name it withdraws a candidate of (None: written before markers
    carried one) and the highest version taken when it was written."""

    name: str | None
    version: int


def withdrawn_marker(name: str, version: int) -> bytes:
    """The candidate key's value once no candidate of `name` is in shadow; `version` is the
    highest version taken when it was written."""
    return json.dumps({"schema": WITHDRAWN_SCHEMA, "name": name, "version": int(version)}).encode()


def encode_withdrawal(name: str, version: int, signer: Signs | None = None) -> ParamsRecord:
    """The record that withdraws `name`'s candidate (`version`: the highest taken)."""
    key = key_of(name, "candidate")
    marker = withdrawn_marker(name, version)
    return ParamsRecord(key, marker, _headers("params", key, marker, signer))


def parse_marker(value: bytes | None) -> Marker | None:
    """The withdrawal marker a value holds; None if it is not one."""
    if value is None or WITHDRAWN_SCHEMA.encode() not in value[:200]:
        return None
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    version, name = obj.get("version"), obj.get("name")
    if obj.get("schema") != WITHDRAWN_SCHEMA or type(version) is not int or version < 0:
        return None
    if name is not None and not isinstance(name, str):
        return None
    return Marker(name, version)


def withdrawn_version(value: bytes | None) -> int | None:
    """The version in a withdrawal marker; None if the value is not one."""
    marker = parse_marker(value)
    return None if marker is None else marker.version


def decode(
    key: bytes | None, value: bytes | None, name: str, role: str = "params"
) -> ParamsUpdate | None:
    """What a params (or history) record says about model name `name`.

    None for another name's record and for a tombstone on the name's key. On the candidate key a
    withdrawal marker or a tombstone withdraws the candidate (`model` None). Otherwise the value
    must be a valid model that claims `name` (or no name), and on the params topic (role
    "params") the stage its key says: ParamsError (`reason`: not_json, invalid, name_mismatch,
    stage_mismatch, ...) if not. The history topic keys every stage by the name. The signature
    is checked before, by the reader that verifies (`kafka_common.signing.Verifier`).
    """
    stage = stage_of(key, name)
    if stage is None or (value is None and stage == "served"):
        return None
    if stage == "candidate":
        if value is None:
            return ParamsUpdate(stage, None)
        marker = parse_marker(value)
        if marker is not None:
            if marker.name not in (None, name):
                raise ParamsError(
                    f"record keyed {candidate_key(name)!r} withdraws {marker.name!r}",
                    "name_mismatch",
                )
            return ParamsUpdate(stage, None, marker.version)
    assert value is not None
    model = ModelParams.loads(value)
    claimed = model.metadata.extra.get("model_name", name)
    if claimed != name:
        raise ParamsError(f"record keyed {name!r} holds model {claimed!r}", "name_mismatch")
    said = model.metadata.extra.get("stage", "served")
    if role == "params" and said != stage:
        raise ParamsError(
            f"record keyed {key_of(name, stage).decode()!r} holds a {said!r} version "
            f"({model.version})",
            "stage_mismatch",
        )
    return ParamsUpdate(stage, model)


class NameState:
    """One name's state as its params records arrive in topic order, refusing replays.

    Versions only ever increase, so a record that would go back is a replay (an old candidate
    or marker copied back onto the topic, signature and all): `apply` says "replayed" and
    nothing changes. A candidate must be newer than every version taken before it; a marker
    withdraws the candidate only if it was written after that candidate was taken (its version
    is at least the candidate's) and no marker before it is newer; a served version must be
    newer than the newest served. A copy of the current served version, candidate or marker
    changes nothing either ("unchanged"): the publisher re-asserts them that way
    (`Publisher.reassert`).
    """

    def __init__(self) -> None:
        self.served: list[ModelParams] = []  # every served version applied, in order
        self.newest: ModelParams | None = None
        self.candidate: ModelParams | None = None
        self.highest = 0  # the highest version taken (served, candidate or marker)
        self.marker = 0  # the newest withdrawal marker's version

    def apply(self, update: ParamsUpdate) -> str:
        """Applies one decoded record: "served", "candidate", "withdrawn", "replayed",
        "marked" (a newer marker with no candidate to withdraw), or "unchanged" (a copy of the
        current served version, candidate or marker; a tombstone with nothing to withdraw)."""
        model = update.model
        if update.stage == "served":
            assert model is not None
            if self.newest is not None and model.version == self.newest.version:
                return "unchanged"
            if self.newest is not None and model.version < self.newest.version:
                return "replayed"
            self.served.append(model)
            self.newest = model
            self.highest = max(self.highest, model.version)
            return "served"
        if model is not None:
            if self.candidate is not None and model.version == self.candidate.version:
                return "unchanged"
            if model.version <= self.highest:
                return "replayed"
            self.candidate = model
            self.highest = model.version
            return "candidate"
        taken = update.withdrawn_at
        if taken is not None:
            # Markers are written with the highest version taken, so they only increase.
            if taken < self.marker or (
                self.candidate is not None and taken < self.candidate.version
            ):
                return "replayed"
            newer = taken > self.marker
            self.marker = taken
            self.highest = max(self.highest, taken)
            if self.candidate is None:
                return "marked" if newer else "unchanged"
        if self.candidate is None:
            return "unchanged"
        self.candidate = None
        return "withdrawn"
