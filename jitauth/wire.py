"""Between the wire and the domain: raw request bytes in, responses out.

The server registers its methods with an identity request deserializer, so
every request reaches :func:`parse_authorize` or :func:`parse_complete` as
the bytes the client sent.  That lets the server check the request size
before any parsing, and name the field that holds invalid UTF-8 (protobuf's
own error does not say which).

The request limits live in :mod:`jitauth.limits`: the whole request's size
is checked here, before parsing; the fields are checked by the facade
(``jitauth.authorizer.validate``) before any decision work.
"""

from google.protobuf.message import DecodeError

from jitauth.limits import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    MAX_REQUEST_BYTES,
)
from jitauth.model import (
    AuthorizeInput,
    AuthorizeResult,
    CompleteResult,
    InvalidInput,
    Outcome,
)
from jitauth.v1 import authorizer_pb2 as pb

_OUTCOMES = {
    pb.OUTCOME_UNSPECIFIED: Outcome.SUCCESS,
    pb.OUTCOME_SUCCESS: Outcome.SUCCESS,
    pb.OUTCOME_FAILURE: Outcome.FAILURE,
    pb.OUTCOME_CANCELLED: Outcome.CANCELLED,
}

_ALLOW = pb.DECISION_ALLOW
_DENY = pb.DECISION_DENY


def parse_authorize(data: bytes) -> AuthorizeInput:
    """Check and convert a serialized ``AuthorizeRequest``.

    Raises :class:`InvalidInput` for an oversized request or one that is not
    a valid message, naming the field with invalid UTF-8 if that is why.
    """
    return to_input(_parse(pb.AuthorizeRequest, data))


def to_input(msg: pb.AuthorizeRequest) -> AuthorizeInput:
    """The domain form of a parsed ``AuthorizeRequest``."""
    subject = msg.subject
    resource = msg.resource
    return AuthorizeInput(
        account_id=msg.account_id,
        subject_id=subject.id,
        action=msg.action,
        resource_type=resource.type,
        resource_id=resource.id,
        roles=tuple(subject.roles),
        subject_attributes=dict(subject.attributes),
        resource_attributes=dict(resource.attributes),
        context=dict(msg.context),
        request_id=msg.request_id,
        units=msg.units,
        dry_run=msg.dry_run,
        explain=msg.explain,
    )


def parse_complete(data: bytes) -> tuple[str, Outcome, int | None]:
    """Check and convert a serialized ``CompleteRequest``: the grant id,
    the outcome and the units consumed (None: all reserved)."""
    msg = _parse(pb.CompleteRequest, data)

    outcome = _OUTCOMES.get(msg.outcome)
    if outcome is None:
        raise InvalidInput("outcome", "unknown outcome %d" % msg.outcome)

    units = msg.units if msg.HasField("units") else None
    return msg.grant_id, outcome, units


def parse_renew(data: bytes) -> tuple[str, str, int]:
    """Check and convert a serialized ``RenewRequest``: the grant id, the
    account and the extension in ms."""
    msg = _parse(pb.RenewRequest, data)

    if not msg.HasField("extend_by"):
        raise InvalidInput("extend_by", "is required")
    extend_by = msg.extend_by
    if extend_by.seconds < 0 or extend_by.nanos < 0:
        raise InvalidInput("extend_by", "must be a positive duration")
    return msg.grant_id, msg.account_id, extend_by.ToMilliseconds()


def renew_response(grant) -> pb.RenewResponse:
    resp = pb.RenewResponse(grant_id=grant.id_hex)
    resp.expires_at.FromMilliseconds(grant.expires_at_ms)
    resp.max_expires_at.FromMilliseconds(grant.max_expires_at_ms)
    return resp


def authorize_response(result: AuthorizeResult) -> pb.AuthorizeResponse:
    resp = pb.AuthorizeResponse(
        decision=_ALLOW if result.allowed else _DENY,
        reason=int(result.reason),
        message=result.message,
        rule_id=result.rule_id,
        revision=result.revision,
        decision_id=result.decision_id,
        units=result.units,
        replayed=result.replayed,
        dry_run=result.dry_run,
        explanation=result.explanation,
    )
    if result.allowed and result.grant_id:
        resp.grant.id = result.grant_id
        resp.grant.expires_at.FromMilliseconds(result.expires_at_ms)
    if result.retry_after_ms:
        resp.retry_after.FromMilliseconds(result.retry_after_ms)
    return resp


def complete_response(result: CompleteResult) -> pb.CompleteResponse:
    resp = pb.CompleteResponse(
        grant_id=result.grant_id,
        state=int(result.state),
        already_ended=result.already,
        outcome=int(result.outcome) if result.outcome is not None else 0,
        account_id=result.account_id,
        action=result.action,
        units=result.units,
        consumed=result.consumed,
    )
    for name, ms in (("issued_at", result.issued_at_ms),
                     ("expires_at", result.expires_at_ms),
                     ("ended_at", result.ended_at_ms)):
        if ms:
            getattr(resp, name).FromMilliseconds(ms)
    return resp


def status_for(exc: Exception, table: dict):
    """The status code ``table`` gives ``exc``'s class or its nearest base
    class, or None: an error table maps domain errors to gRPC codes."""
    for cls in type(exc).__mro__:
        code = table.get(cls)
        if code is not None:
            return code
    return None


def parse(cls, data: bytes):
    """Parse raw request bytes into ``cls``, naming a bad field."""
    return _parse(cls, data)


def parse_batch(data: bytes) -> list:
    """Check and convert a serialized ``AuthorizeBatchRequest``.

    Returns one entry per item: an ``AuthorizeInput``, or the
    ``InvalidInput`` that item alone earns (invalid UTF-8, over the size of
    a single request), its field path prefixed with ``requests[i]``.  A
    batch that is too large, has too many items or is not a well-formed
    message as a whole raises ``InvalidInput``.
    """
    if len(data) > MAX_BATCH_BYTES:
        raise InvalidInput("request", "larger than %d bytes"
                           % MAX_BATCH_BYTES)
    try:
        raw_items = [bytes(payload) for number, wire_type, payload
                     in _fields(memoryview(data))
                     if number == 1 and wire_type == _LEN]
    except (_Malformed, IndexError):
        raise InvalidInput("request", "not a valid AuthorizeBatchRequest "
                           "message") from None
    if len(raw_items) > MAX_BATCH_ITEMS:
        raise InvalidInput("requests", "more than %d items"
                           % MAX_BATCH_ITEMS)

    items = []
    for index, raw in enumerate(raw_items):
        try:
            items.append(to_input(_parse(pb.AuthorizeRequest, raw)))
        except InvalidInput as exc:
            where = "requests[%d]" % index
            field = where if exc.field == "request" else "%s.%s" % (
                where, exc.field)
            items.append(InvalidInput(field, exc.message))
    return items


def batch_response(results: list) -> pb.AuthorizeBatchResponse:
    """One result per item: a response, or the item's INVALID_ARGUMENT."""
    resp = pb.AuthorizeBatchResponse()
    for result in results:
        entry = resp.results.add()
        if isinstance(result, InvalidInput):
            entry.error.code = 3  # INVALID_ARGUMENT
            entry.error.message = str(result)
        else:
            entry.response.CopyFrom(authorize_response(result))
    return resp


def _parse(cls, data: bytes, max_bytes: int = MAX_REQUEST_BYTES):
    if len(data) > max_bytes:
        raise InvalidInput("request", "larger than %d bytes" % max_bytes)
    try:
        return cls.FromString(data)
    except DecodeError:
        path = find_invalid_utf8(cls.DESCRIPTOR, data)
        if path is None:
            raise InvalidInput("request", "not a valid %s message"
                               % cls.DESCRIPTOR.name) from None
        raise InvalidInput(path, "not valid UTF-8") from None


def _quote(key: str) -> str:
    return '"%s"' % key.replace("\\", "\\\\").replace('"', '\\"')


# The wire walk below only runs after protobuf refused a message, so it
# favours clarity over speed.

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = range(6)


def find_invalid_utf8(descriptor, data: bytes) -> str | None:
    """The path of the first string field holding invalid UTF-8, or None.

    Walks the protobuf wire format of ``data`` against ``descriptor``:
    ``subject.id``, ``subject.roles[1]``, ``context["env"]`` for a value,
    ``context`` for a map key.  Returns None when no such field is found
    (the message is malformed in some other way).
    """
    try:
        return _walk(descriptor, memoryview(data), "")
    except _Malformed:
        return None


class _Malformed(Exception):
    pass


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed()
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    """Yield ``(number, wire_type, payload)``; payload is a memoryview for
    length-delimited fields and None otherwise."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        payload = None
        if wire_type == _VARINT:
            _, pos = _varint(buf, pos)
        elif wire_type == _I64:
            pos += 8
        elif wire_type == _I32:
            pos += 4
        elif wire_type == _LEN:
            size, pos = _varint(buf, pos)
            payload = buf[pos:pos + size]
            pos += size
        else:
            # Groups are not used by proto3 messages.
            raise _Malformed()
        if pos > len(buf):
            raise _Malformed()
        yield number, wire_type, payload


def _valid_utf8(payload) -> bool:
    try:
        str(payload, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _walk(descriptor, buf, prefix: str) -> str | None:
    counts: dict[int, int] = {}
    for number, wire_type, payload in _fields(buf):
        field = descriptor.fields_by_number.get(number)
        if field is None or wire_type != _LEN:
            continue
        index = counts.get(number, 0)
        counts[number] = index + 1
        path = prefix + field.name
        if field.type == field.TYPE_STRING:
            if not _valid_utf8(payload):
                if field.is_repeated:
                    return "%s[%d]" % (path, index)
                return path
        elif field.type == field.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                found = _walk_map_entry(entry, payload, path)
            else:
                if field.is_repeated:
                    path = "%s[%d]" % (path, index)
                found = _walk(entry, payload, path + ".")
            if found is not None:
                return found
    return None


def _walk_map_entry(entry, buf, path: str) -> str | None:
    key = None
    value_field = entry.fields_by_name["value"]
    value = None
    for number, wire_type, payload in _fields(buf):
        if wire_type != _LEN:
            continue
        if number == 1:
            if not _valid_utf8(payload):
                return path
            key = str(payload, "utf-8")
        elif number == 2:
            value = payload
    if value is None:
        return None
    item = "%s[%s]" % (path, _quote(key or ""))
    if value_field.type == value_field.TYPE_STRING:
        return None if _valid_utf8(value) else item
    if value_field.type == value_field.TYPE_MESSAGE:
        return _walk(value_field.message_type, value, item + ".")
    return None
