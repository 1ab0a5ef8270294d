"""What the broker's ACLs let this principal do, checked before a service starts.

A broker with an authorizer answers a client that lacks an ACL in ways that are easy to misread:
a topic the principal may not describe looks like a topic that does not exist (a worker then
waits for it forever), and a group it may not join crashes Faust's consumer deep inside its
loop. `check_access` asks once, before anything starts, for the operations this principal may
do on each topic it needs (Metadata v8's authorized operations) and on each consumer group
(DescribeGroups' authorized operations), and turns the first gap into one line naming the
operation, the resource and the setting that names it.

A broker without an authorizer allows everything, so the check passes there; a topic that does
not exist yet is skipped (ensure_topics creates it, or says that it may not).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, ClassVar, TypeAlias

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IncompatibleBrokerVersion,
    KafkaError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.admin import DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from kafka_common.connection import KafkaUnavailable, _quiet
from kafka_common.settings import KafkaSettings

#: Kafka's ACL operation codes (org.apache.kafka.common.acl.AclOperation).
OPERATIONS = {"read": 3, "write": 4, "create": 5, "describe": 8}


class NotAuthorized(KafkaUnavailable):
    """The broker's ACLs do not allow an operation the service needs."""


@dataclasses.dataclass(frozen=True)
class Need:
    """An operation (read, write, create, describe) the service needs on a topic or group."""

    kind: str  # "topic" or "group"
    name: str
    operation: str
    setting: str = ""  # the variable that names the resource, for the message

    def __post_init__(self) -> None:
        if self.kind not in ("topic", "group"):
            raise ValueError(f"kind must be topic or group, got {self.kind!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {sorted(OPERATIONS)}")


def _missing(need: Need, user: str) -> NotAuthorized:
    via = f" ({need.setting})" if need.setting else ""
    who = f"user {user!r}" if user else "this client"
    return NotAuthorized(
        f"not authorized: {who} may not {need.operation} {need.kind} {need.name!r}{via}; "
        f"the broker's ACLs must allow {need.operation.capitalize()} on it"
    )


def _allows(bitfield: int, operation: str) -> bool:
    """Kafka's authorized-operations bit field: bit n set when the operation of code n is
    allowed. Read and Write imply Describe."""
    if bitfield == -(2**31):  # not computed (an old broker): nothing to check against
        return True
    codes = [OPERATIONS[operation]]
    if operation == "describe":
        codes += [OPERATIONS["read"], OPERATIONS["write"]]
    return any(bitfield & (1 << code) for code in codes)


# Metadata v8 (KIP-430): aiokafka speaks up to v5, which cannot ask for authorized operations.
class _MetadataResponseV8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


_MetadataV8: TypeAlias = _MetadataRequestV8


class _TopicOperationsRequest(Request[_MetadataV8]):
    API_KEY: ClassVar[int] = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataV8]) -> _MetadataV8:
        return request_struct_class(self._topics, False, False, True)


# DescribeGroups v3 (KIP-430): aiokafka's v3 request parses its response as v2, which drops the
# authorized operations.
class _DescribeGroupsRequestV3(RequestStruct):
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _GroupOperationsRequest(Request[_DescribeGroupsRequestV3]):
    API_KEY: ClassVar[int] = 15

    def __init__(self, group: str) -> None:
        self._group = group

    def build(self, request_struct_class: type[_DescribeGroupsRequestV3]) -> Any:
        return request_struct_class([self._group], True)


async def _topic_operations(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, Any]:
    """Topic -> its authorized-operations bit field, or the error class the broker answered."""
    response = await admin._send_request(_TopicOperationsRequest(topics))
    out: dict[str, Any] = {}
    for error_code, topic, _internal, _parts, operations in response.topics:
        out[topic] = for_code(error_code) if error_code else operations
    return out


async def _group_operations(admin: AIOKafkaAdminClient, group: str, timeout_s: float) -> Any:
    """The group's authorized-operations bit field, or the error class the broker answered.
    A fresh broker's coordinator may not be up yet: retriable errors are retried until
    timeout_s."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            node = await admin.find_coordinator(group)
            response = await admin._send_request(_GroupOperationsRequest(group), node)
            error_code, operations = response.groups[0][0], response.groups[0][-1]
            if not error_code:
                return operations
            error: KafkaError = for_code(error_code)()
        except KafkaError as exc:
            error = exc
        if not error.retriable or asyncio.get_running_loop().time() > deadline:
            return type(error)
        await asyncio.sleep(0.2)


async def check_access(kafka: KafkaSettings, needs: list[Need], timeout_s: float = 30.0) -> None:
    """Raises NotAuthorized for the first need the broker's ACLs do not meet."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=int(timeout_s * 1000))
    # aiokafka's own warnings (SASL PLAIN without TLS, say) come again from the service's
    # clients; here they would only bury the one line a refusal is.
    with _quiet("aiokafka"):
        await admin.start()
        try:
            topics = sorted({n.name for n in needs if n.kind == "topic"})
            by_topic = await asyncio.wait_for(_topic_operations(admin, topics), timeout_s)
            by_group = {
                group: await _group_operations(admin, group, timeout_s)
                for group in sorted({n.name for n in needs if n.kind == "group"})
            }
        except (NotImplementedError, IncompatibleBrokerVersion):
            return  # a broker older than Kafka 2.3 cannot tell; the clients will find out
        finally:
            await admin.close()
    for need in needs:
        found = (by_topic if need.kind == "topic" else by_group).get(need.name)
        if found is UnknownTopicOrPartitionError:
            continue  # not created yet: ensure_topics creates it (or says it may not)
        if found in (TopicAuthorizationFailedError, GroupAuthorizationFailedError):
            raise _missing(need, kafka.sasl_username)
        if isinstance(found, type):
            raise found(f"checking access to {need.kind} {need.name!r}")
        if isinstance(found, int) and not _allows(found, need.operation):
            raise _missing(need, kafka.sasl_username)
