"""Licenses: what an account bought, read from JSON Lines, stored in binary.

One license per account: its plan, its status, the window in which it is
valid, entitlements and limit overrides beyond the plan, and free-form
attributes that policy conditions can test (``license.<key>``).

The binary record is the one the matchers read in place from the memory map;
``docs/internals.md`` gives the layout byte by byte.
"""

import functools
import json
import math
import re
import struct
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from jitauth.model import LicenseStatus

FORMAT_VERSION = 1
NO_LOWER_BOUND = -(2**63)
NO_UPPER_BOUND = 2**63 - 1

# XXX: strings in a record carry a u16 length; the loader rejects longer
# ones (and more than 65,535 entries of a kind) rather than truncating.
MAX_STRING_BYTES = 0xFFFF
MAX_ENTRIES = 0xFFFF
# The longest number the matchers' numeric comparisons read (gt, gte, lt,
# lte); a longer attribute would never compare, so it is refused.
MAX_NUMBER_CHARS = 32
# JSON integers longer than this are no field's value; they are kept as
# text so that the field, not the parser, reports them.
_MAX_INT_DIGITS = 64

_HEADER = struct.Struct("<BBHHHqq")
_U16 = struct.Struct("<H")
_I64 = struct.Struct("<q")


@dataclass(slots=True)
class License:
    account_id: str
    plan: str
    status: LicenseStatus = LicenseStatus.ACTIVE
    valid_from_ms: int | None = None
    valid_until_ms: int | None = None
    entitlements: tuple = ()
    limits: dict = field(default_factory=dict)
    attributes: dict = field(default_factory=dict)


class CorruptRecord(ValueError):
    """A stored license record does not follow the layout."""


def _put_str(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    if len(data) > MAX_STRING_BYTES:
        raise ValueError("string longer than %d bytes" % MAX_STRING_BYTES)
    out += _U16.pack(len(data))
    out += data


def encode_license(lic: License) -> bytes:
    """The binary record of a license (the value stored under its account)."""
    for name, items in (("entitlements", lic.entitlements),
                        ("limits", lic.limits),
                        ("attributes", lic.attributes)):
        if len(items) > MAX_ENTRIES:
            raise ValueError("more than %d %s" % (MAX_ENTRIES, name))

    out = bytearray(_HEADER.pack(
        FORMAT_VERSION,
        int(lic.status),
        len(lic.entitlements),
        len(lic.limits),
        len(lic.attributes),
        NO_LOWER_BOUND if lic.valid_from_ms is None else lic.valid_from_ms,
        NO_UPPER_BOUND if lic.valid_until_ms is None else lic.valid_until_ms,
    ))
    _put_str(out, lic.plan)
    for entitlement in lic.entitlements:
        _put_str(out, entitlement)
    for name, value in lic.limits.items():
        _put_str(out, name)
        out += _I64.pack(value)
    for key, value in lic.attributes.items():
        _put_str(out, key)
        _put_str(out, value)
    return bytes(out)


def why_unusable(record: bytes | None, now_ms: int) -> str:
    """Why a license record cannot back an action at ``now``: ``""`` when
    it can (active, inside its window), else a short reason."""
    if record is None:
        return "has no license"
    try:
        (version, status, _, _, _, valid_from, valid_until
         ) = _HEADER.unpack_from(record)
    except struct.error:
        return "has a corrupt license record"
    if version != FORMAT_VERSION:
        return "has a corrupt license record"
    if status != LicenseStatus.ACTIVE:
        return "has a license that is not active"
    if now_ms < valid_from:
        return "has a license that is not valid yet"
    if now_ms >= valid_until:
        return "has a license that has expired"
    return ""


def plan_and_limit(record: bytes, name: str) -> tuple:
    """``(plan, the license's own value of limit name or None)``, read from
    a binary record without decoding the rest of it (the quota path of
    every metered allow).  Raises ``CorruptRecord`` on a truncated one."""
    try:
        (version, _, n_ent, n_lim, _, _, _) = _HEADER.unpack_from(record)
        if version != FORMAT_VERSION:
            raise CorruptRecord("license record has format %d" % version)
        pos = _HEADER.size
        (size,) = _U16.unpack_from(record, pos)
        plan = record[pos + 2:pos + 2 + size].decode("utf-8")
        pos += 2 + size
        for _ in range(n_ent):
            pos += 2 + _U16.unpack_from(record, pos)[0]
        wanted = name.encode()
        for _ in range(n_lim):
            (size,) = _U16.unpack_from(record, pos)
            key = record[pos + 2:pos + 2 + size]
            pos += 2 + size
            if key == wanted:
                return plan, _I64.unpack_from(record, pos)[0]
            pos += 8
        return plan, None
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptRecord("license record is truncated or not UTF-8") \
            from exc


def decode_license(account_id: str, record: bytes) -> License:
    """Read a binary record back (for the CLI and the admin API)."""
    view = memoryview(record)
    pos = 0

    def take(size: int) -> memoryview:
        nonlocal pos
        if pos + size > len(view):
            raise CorruptRecord("license record of %s is truncated"
                                % account_id)
        chunk = view[pos:pos + size]
        pos += size
        return chunk

    def text() -> str:
        (size,) = _U16.unpack(take(2))
        try:
            return str(take(size), "utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptRecord("license record of %s holds invalid UTF-8"
                                % account_id) from exc

    (version, status, n_ent, n_lim, n_attr, valid_from, valid_until
     ) = _HEADER.unpack(take(_HEADER.size))
    if version != FORMAT_VERSION:
        raise CorruptRecord("license record of %s has format %d"
                            % (account_id, version))
    try:
        status = LicenseStatus(status)
    except ValueError as exc:
        raise CorruptRecord("license record of %s has status %d"
                            % (account_id, status)) from exc

    plan = text()
    entitlements = tuple(text() for _ in range(n_ent))
    limits = {}
    for _ in range(n_lim):
        name = text()
        (limits[name],) = _I64.unpack(take(8))
    attributes = {}
    for _ in range(n_attr):
        key = text()
        attributes[key] = text()
    return License(
        account_id=account_id,
        plan=plan,
        status=status,
        valid_from_ms=None if valid_from == NO_LOWER_BOUND else valid_from,
        valid_until_ms=None if valid_until == NO_UPPER_BOUND else valid_until,
        entitlements=entitlements,
        limits=limits,
        attributes=attributes,
    )


_FIELDS = ("account", "plan", "status", "valid_from", "valid_until",
           "entitlements", "limits", "attributes")
_STATUSES = {s.name.lower(): s for s in LicenseStatus}


# RFC 3339 date-time: a full date, T, a full time with seconds, a zone.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII)
_RFC3339_NO_ZONE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?", re.ASCII)
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def _timestamp_ms(value) -> int | None:
    """An RFC 3339 timestamp as ms since the epoch, rounded down."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp or null")
    return _rfc3339_ms(value)


# Licenses of a file tend to share a few dates (the start of a term).
@functools.lru_cache(maxsize=1024)
def _rfc3339_ms(value: str) -> int:
    match = _RFC3339.fullmatch(value)
    if not match:
        if _RFC3339_NO_ZONE.fullmatch(value):
            raise ValueError("%r has no time zone (add Z or +00:00)"
                             % value)
        raise ValueError("%r is not an RFC 3339 timestamp (write "
                         "YYYY-MM-DDTHH:MM:SS, an optional .fraction, then "
                         "Z or +HH:MM)" % _cut(value))
    (year, month, day, hour, minute, second, fraction, utc, sign,
     zone_hours, zone_minutes) = match.groups()
    try:
        days = date(int(year), int(month), int(day)).toordinal()
    except ValueError:
        raise ValueError("%r is not a calendar date" % value) from None
    if second == "60":
        raise ValueError("%r: leap seconds (:60) are not supported"
                         % value)
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        raise ValueError("%r is not a time of day" % value)
    offset = 0
    if not utc:
        if int(zone_hours) > 23 or int(zone_minutes) > 59:
            raise ValueError("%r has no valid zone offset" % value)
        offset = int(zone_hours) * 60 + int(zone_minutes)
        offset = -offset if sign == "-" else offset

    # Whole minutes and seconds first, then the fraction's milliseconds
    # (rounded down, as the fraction is never negative): exact, no float.
    minutes = ((days - _EPOCH_DAY) * 24 + int(hour)) * 60 + int(minute)
    seconds = (minutes - offset) * 60 + int(second)
    return seconds * 1000 + int((fraction or "").ljust(3, "0")[:3])


def _cut(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


class _LongInteger:
    """A JSON integer too long to be any field's value, kept as text."""

    __slots__ = ("digits",)

    def __init__(self, digits: str):
        self.digits = digits


def _parse_int(text: str):
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        return _LongInteger(text)
    return int(text)


class _Object(dict):
    """A JSON object that remembers the keys it was given twice."""

    duplicates: tuple = ()


def _object(pairs: list) -> _Object:
    out = _Object(pairs)
    if len(out) != len(pairs):
        keys = [key for key, _ in pairs]
        out.duplicates = tuple(
            key for index, key in enumerate(keys) if key in keys[:index])
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_object)
# Read again with this one a line whose integer Python refuses to convert.
_LONG_INTEGER_DECODER = json.JSONDecoder(object_pairs_hook=_object,
                                         parse_int=_parse_int)


def decode_line(text):
    """One line of a license file (``str`` or UTF-8 ``bytes``) as JSON.

    Objects given a key twice are marked so that ``_license`` refuses
    them.  Raises ``_LineError`` (field ``file`` or ``json``).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _LineError("file", "not UTF-8: %s" % exc.reason) \
                from None
    decoders = (_DECODER, _LONG_INTEGER_DECODER)
    for decoder in decoders:
        try:
            return decoder.decode(text)
        except json.JSONDecodeError as exc:
            raise _LineError("json", exc.msg) from None
        except RecursionError:
            raise _LineError("json", "nested too deeply") from None
        except ValueError as exc:
            if decoder is decoders[-1]:
                raise _LineError("json", str(exc)) from None


def _number_text(value) -> str:
    """A JSON number as the plain decimal the numeric comparisons read."""
    if isinstance(value, _LongInteger):
        text = value.digits
    elif isinstance(value, int):
        text = str(value)
    else:
        if not math.isfinite(value):
            raise ValueError("%r is not a finite number" % value)
        # Plain digits, never an exponent (1e-07 is 0.0000001); a whole
        # number is written as an int is (3.0 is 3, -0.0 is 0).
        text = repr(value)
        if "e" in text:
            text = format(Decimal(text), "f")
        if text.endswith(".0"):
            text = text[:-2]
        if text == "-0":
            text = "0"
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(
            "%s is %d characters as a plain decimal; numeric comparisons "
            "read at most %d, so it would never compare (write it as a "
            "string if it is not a quantity)"
            % (_cut(text), len(text), MAX_NUMBER_CHARS))
    return text


def _attribute(value) -> str:
    """Attributes are stored as the strings conditions compare with."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, _LongInteger)):
        return _number_text(value)
    if isinstance(value, str):
        return value
    raise ValueError("must be a string, number or boolean")


def _text(field: str, text: str, limit: int = MAX_STRING_BYTES) -> None:
    """Refuse a string a record cannot hold: not UTF-8, or too long."""
    if text.isascii() and len(text) <= limit:
        return
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise _LineError(field, "holds a lone surrogate (\\ud800 to "
                         "\\udfff), which is not text") from None
    if size > limit:
        raise _LineError(field, "longer than %d bytes" % limit)


def _names_fit(entitlements: list, limits: dict, attributes: dict) -> None:
    """Refuse a name or attribute a record cannot hold, naming its field.

    ASCII text no longer than a record string fits; only a line with
    other text is checked string by string.
    """
    texts = "".join([*entitlements, *limits, *attributes,
                     *attributes.values()])
    if texts.isascii() and len(texts) <= MAX_STRING_BYTES:
        return
    for name in entitlements:
        _text("entitlements", name)
    for name in limits:
        _text("limits.%s" % name, name)
    for key, value in attributes.items():
        _text("attributes.%s" % key, key)
        _text("attributes.%s" % key, value)


def _unique_fields(obj, prefix: str = "") -> None:
    """Refuse an object that gave one of its keys twice."""
    for key in getattr(obj, "duplicates", ()):
        raise _LineError(prefix + key, "given twice in one object (the "
                         "last would silently win)")


def _license(obj, plans) -> License:
    """Validate one decoded JSON line; raise (field, message) on error."""
    if not isinstance(obj, dict):
        raise _LineError("", "each line must be a JSON object")
    _unique_fields(obj)
    for key in obj:
        if key not in _FIELDS:
            raise _LineError(key, "unknown field (expected one of: %s)"
                             % ", ".join(_FIELDS))
    for key in ("account", "plan"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise _LineError(key, "must be a non-empty string")
        _text(key, obj[key], 256)
    if plans is not None and obj["plan"] not in plans:
        raise _LineError("plan", "plan %r is not defined in the policy"
                         % obj["plan"])

    status = obj.get("status", "active")
    if not isinstance(status, str) or status not in _STATUSES:
        raise _LineError("status", "must be one of: %s"
                         % ", ".join(_STATUSES))

    window = {}
    for key in ("valid_from", "valid_until"):
        try:
            window[key] = _timestamp_ms(obj.get(key))
        except ValueError as exc:
            raise _LineError(key, str(exc)) from None
    if (window["valid_from"] is not None and window["valid_until"] is not None
            and window["valid_from"] >= window["valid_until"]):
        raise _LineError("valid_until", "must be later than valid_from")

    entitlements = obj.get("entitlements", [])
    if not isinstance(entitlements, list) or not all(
            isinstance(e, str) and e for e in entitlements):
        raise _LineError("entitlements", "must be a list of names")

    limits = obj.get("limits", {})
    if not isinstance(limits, dict):
        raise _LineError("limits", "must map limit names to numbers")
    _unique_fields(limits, "limits.")
    for name, value in limits.items():
        if (not isinstance(value, int) or isinstance(value, bool)
                or not 0 <= value < 2**63):
            raise _LineError("limits.%s" % name, "must be a whole number "
                             ">= 0")

    attributes = obj.get("attributes", {})
    if not isinstance(attributes, dict):
        raise _LineError("attributes", "must be an object")
    _unique_fields(attributes, "attributes.")
    converted = {}
    for key, value in attributes.items():
        try:
            converted[key] = _attribute(value)
        except ValueError as exc:
            raise _LineError("attributes.%s" % key, str(exc)) from None
    _names_fit(entitlements, limits, converted)
    for name, items in (("entitlements", entitlements), ("limits", limits),
                        ("attributes", attributes)):
        if len(items) > MAX_ENTRIES:
            raise _LineError(name, "more than %d entries" % MAX_ENTRIES)

    return License(
        account_id=obj["account"],
        plan=obj["plan"],
        status=_STATUSES[status],
        valid_from_ms=window["valid_from"],
        valid_until_ms=window["valid_until"],
        entitlements=tuple(dict.fromkeys(entitlements)),
        limits=limits,
        attributes=converted,
    )


class _LineError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def read_licenses(path: str, plans=None):
    """Yield ``(line, License)`` from a JSON Lines file, validating each.

    ``plans``, when given, is the set of plan names the policy defines.
    Raises ``jitauth.policy.SourceError`` naming the file, line and field of
    the first problem; blank lines and lines starting with # are skipped.
    """
    from jitauth.policy import SourceError

    seen = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise SourceError(path, 0, "file", str(exc)) from None
    with f:
        number = 0
        try:
            for number, text in enumerate(f, 1):
                if not text.strip() or text.lstrip().startswith("#"):
                    continue
                try:
                    lic = _license(decode_line(text), plans)
                    encode_license(lic)
                except _LineError as exc:
                    raise SourceError(path, number, exc.field or "line",
                                      str(exc)) from None
                except ValueError as exc:
                    raise SourceError(path, number, "line", str(exc)) \
                        from None
                if lic.account_id in seen:
                    raise SourceError(path, number, "account",
                                      "account %r is already licensed at "
                                      "line %d" % (lic.account_id,
                                                   seen[lic.account_id]))
                seen[lic.account_id] = number
                yield number, lic
        except UnicodeDecodeError as exc:
            raise SourceError(path, number + 1, "file",
                              "not UTF-8: %s" % exc.reason) from None
