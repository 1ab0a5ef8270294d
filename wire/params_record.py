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
- Headers: none, or the value's signature (`gmm-signature`, 64 raw bytes) when the publisher
  signs (`kafka_common.signing`: the signed bytes are exactly the value's).
- A withdrawal marker on the candidate key, `{"schema": "gmm-candidate-withdrawn/1",
  "version": V}`, says no candidate is in shadow any more (V: the highest version taken then).
  Not a tombstone: compaction keeps it, and with it the highest version.

A reader decodes a record for the name it serves (`decode`): another name's record is nothing
to it, and one of its own that does not hold a valid model of that name is refused with a
`ParamsError` whose `reason` is counted.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from mixture.params import ModelParams, ParamsError

#: The record header that carries a signature of the value.
SIGNATURE_HEADER = "gmm-signature"

#: Who published a version (metadata.published_by).
PUBLISHERS = ("trainer", "cli", "rollback")

#: metadata.stage of a version: served when published, or a candidate scored in shadow.
STAGES = ("served", "candidate")

#: The schema of a withdrawal marker on the candidate key.
WITHDRAWN_SCHEMA = "gmm-candidate-withdrawn/1"

Headers = list[tuple[str, bytes]]


class Signs(Protocol):
    """What signs a value (`kafka_common.signing.Signer`)."""

    def sign(self, value: bytes) -> bytes: ...


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


def signature_headers(value: bytes, signer: Signs) -> Headers:
    """The headers of a signed record with this value: its signature."""
    return [(SIGNATURE_HEADER, signer.sign(value))]


def _headers(value: bytes, signer: Signs | None) -> Headers | None:
    return None if signer is None else signature_headers(value, signer)


def signature_of(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The record's signature header, or None (unsigned, or more than one)."""
    found = [v for k, v in headers or () if k == SIGNATURE_HEADER]
    return found[0] if len(found) == 1 else None


def encode(
    model: ModelParams, name: str, stage: str = "served", signer: Signs | None = None
) -> ParamsRecord:
    """The params topic record of `model` (stamped and versioned already) as a version of
    `name` at `stage`; signed if `signer` is given. On the history topic the same value and
    headers go under `key_of(name, "served")`."""
    value = model.dumps().encode()
    return ParamsRecord(key_of(name, stage), value, _headers(value, signer))


def withdrawn_marker(version: int) -> bytes:
    """The candidate key's value once no candidate is in shadow; `version` is the highest
    version taken when it was written."""
    return json.dumps({"schema": WITHDRAWN_SCHEMA, "version": int(version)}).encode()


def encode_withdrawal(name: str, version: int, signer: Signs | None = None) -> ParamsRecord:
    """The record that withdraws `name`'s candidate (`version`: the highest taken)."""
    marker = withdrawn_marker(version)
    return ParamsRecord(key_of(name, "candidate"), marker, _headers(marker, signer))


def withdrawn_version(value: bytes | None) -> int | None:
    """The version in a withdrawal marker; None if the value is not one."""
    if value is None or WITHDRAWN_SCHEMA.encode() not in value[:200]:
        return None
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    version = obj.get("version")
    if obj.get("schema") != WITHDRAWN_SCHEMA or type(version) is not int or version < 0:
        return None
    return version


def decode(key: bytes | None, value: bytes | None, name: str) -> ParamsUpdate | None:
    """What a params (or history) record says about model name `name`.

    None for another name's record and for a tombstone on the name's key. On the candidate key a
    withdrawal marker or a tombstone withdraws the candidate (`model` None). Otherwise the value
    must be a valid model that claims `name` (or no name): ParamsError (`reason`: not_json,
    invalid, name_mismatch, ...) if not. The signature is checked before, by the reader that
    verifies (`kafka_common.signing.Verifier.verify_record`).
    """
    stage = stage_of(key, name)
    if stage is None or (value is None and stage == "served"):
        return None
    if stage == "candidate":
        if value is None:
            return ParamsUpdate(stage, None)
        marker = withdrawn_version(value)
        if marker is not None:
            return ParamsUpdate(stage, None, marker)
    assert value is not None
    model = ModelParams.loads(value)
    claimed = model.metadata.extra.get("model_name", name)
    if claimed != name:
        raise ParamsError(f"record keyed {name!r} holds model {claimed!r}", "name_mismatch")
    return ParamsUpdate(stage, model)
