"""How the worker sorts the broker's errors on a send or a commit: `fatal` (stop), `rejected`
(the records are never accepted as they are) or `retriable` (send again). Delivery and the
checkpoint both use it, so one answer means one thing everywhere."""

from __future__ import annotations

from aiokafka.errors import (
    AuthenticationFailedError,
    BrokerResponseError,
    ClusterAuthorizationFailedError,
    DuplicateSequenceNumber,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
)

FATAL_ERRORS = (
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    SaslAuthenticationFailed,
    AuthenticationFailedError,
)
SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
#: Refusals of the producer's session, not of its records: a fresh producer sends them again.
SESSION_ERRORS = (
    OutOfOrderSequenceNumber,
    DuplicateSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    UnknownProducerId,
    ProducerFenced,
)


def classify_error(exc: BaseException) -> str:
    """`fatal` (stop), `rejected` (never accepted as it is) or `retriable` (send again).

    Any non-retriable broker answer other than a session's refusal (too large, INVALID_RECORD,
    an invalid timestamp, a policy violation, ...) refuses those records: resending cannot help.
    """
    if isinstance(exc, FATAL_ERRORS):
        return "fatal"
    if isinstance(exc, SESSION_ERRORS):
        return "retriable"
    if isinstance(exc, BrokerResponseError) and not exc.retriable:
        return "rejected"
    return "retriable"


def needs_new_producer(exc: BaseException) -> bool:
    """The broker refused a batch for good (its sequence numbers are spent) or the session."""
    return isinstance(exc, SESSION_ERRORS) or (
        isinstance(exc, BrokerResponseError) and not exc.retriable
    )
