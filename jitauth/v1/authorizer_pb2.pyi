import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_ALLOWED_BY_RULE: _ClassVar[Reason]
    REASON_NO_LICENSE: _ClassVar[Reason]
    REASON_LICENSE_INACTIVE: _ClassVar[Reason]
    REASON_LICENSE_EXPIRED: _ClassVar[Reason]
    REASON_LICENSE_NOT_YET_VALID: _ClassVar[Reason]
    REASON_NOT_ENTITLED: _ClassVar[Reason]
    REASON_DENIED_BY_RULE: _ClassVar[Reason]
    REASON_NO_MATCHING_RULE: _ClassVar[Reason]
    REASON_CONCURRENCY_LIMIT_REACHED: _ClassVar[Reason]
    REASON_QUOTA_EXHAUSTED: _ClassVar[Reason]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCESS: _ClassVar[Outcome]
    OUTCOME_FAILURE: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]

class GrantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_STATE_UNSPECIFIED: _ClassVar[GrantState]
    GRANT_STATE_LIVE: _ClassVar[GrantState]
    GRANT_STATE_COMPLETED: _ClassVar[GrantState]
    GRANT_STATE_EXPIRED: _ClassVar[GrantState]
    GRANT_STATE_REVOKED: _ClassVar[GrantState]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision
REASON_UNSPECIFIED: Reason
REASON_ALLOWED_BY_RULE: Reason
REASON_NO_LICENSE: Reason
REASON_LICENSE_INACTIVE: Reason
REASON_LICENSE_EXPIRED: Reason
REASON_LICENSE_NOT_YET_VALID: Reason
REASON_NOT_ENTITLED: Reason
REASON_DENIED_BY_RULE: Reason
REASON_NO_MATCHING_RULE: Reason
REASON_CONCURRENCY_LIMIT_REACHED: Reason
REASON_QUOTA_EXHAUSTED: Reason
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCESS: Outcome
OUTCOME_FAILURE: Outcome
OUTCOME_CANCELLED: Outcome
GRANT_STATE_UNSPECIFIED: GrantState
GRANT_STATE_LIVE: GrantState
GRANT_STATE_COMPLETED: GrantState
GRANT_STATE_EXPIRED: GrantState
GRANT_STATE_REVOKED: GrantState

class Subject(_message.Message):
    __slots__ = ("id", "roles", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("type", "id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("request_id", "account_id", "subject", "action", "resource", "context", "units", "dry_run", "explain")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    account_id: str
    subject: Subject
    action: str
    resource: Resource
    context: _containers.ScalarMap[str, str]
    units: int
    dry_run: bool
    explain: bool
    def __init__(self, request_id: _Optional[str] = ..., account_id: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ..., action: _Optional[str] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., context: _Optional[_Mapping[str, str]] = ..., units: _Optional[int] = ..., dry_run: _Optional[bool] = ..., explain: _Optional[bool] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("id", "expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("decision", "reason", "message", "grant", "rule_id", "revision", "decision_id", "retry_after", "units", "replayed", "dry_run", "explanation")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reason: Reason
    message: str
    grant: Grant
    rule_id: str
    revision: int
    decision_id: str
    retry_after: _duration_pb2.Duration
    units: int
    replayed: bool
    dry_run: bool
    explanation: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reason: _Optional[_Union[Reason, str]] = ..., message: _Optional[str] = ..., grant: _Optional[_Union[Grant, _Mapping]] = ..., rule_id: _Optional[str] = ..., revision: _Optional[int] = ..., decision_id: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., units: _Optional[int] = ..., replayed: _Optional[bool] = ..., dry_run: _Optional[bool] = ..., explanation: _Optional[_Iterable[str]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("grant_id", "outcome", "units")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    outcome: Outcome
    units: int
    def __init__(self, grant_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., units: _Optional[int] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("grant_id", "state", "already_ended", "outcome", "account_id", "action", "issued_at", "expires_at", "ended_at", "units", "consumed")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_ENDED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    state: GrantState
    already_ended: bool
    outcome: Outcome
    account_id: str
    action: str
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    units: int
    consumed: int
    def __init__(self, grant_id: _Optional[str] = ..., state: _Optional[_Union[GrantState, str]] = ..., already_ended: _Optional[bool] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., account_id: _Optional[str] = ..., action: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., units: _Optional[int] = ..., consumed: _Optional[int] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("grant_id", "account_id", "extend_by")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EXTEND_BY_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    account_id: str
    extend_by: _duration_pb2.Duration
    def __init__(self, grant_id: _Optional[str] = ..., account_id: _Optional[str] = ..., extend_by: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("grant_id", "expires_at", "max_expires_at")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    expires_at: _timestamp_pb2.Timestamp
    max_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, grant_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuthorizeBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AuthorizeRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[AuthorizeRequest, _Mapping]]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class AuthorizeBatchResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: AuthorizeResponse
    error: ItemError
    def __init__(self, response: _Optional[_Union[AuthorizeResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class AuthorizeBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AuthorizeBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[AuthorizeBatchResult, _Mapping]]] = ...) -> None: ...
