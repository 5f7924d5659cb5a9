"""Licenses: what an account bought, read from JSON Lines, stored in binary.

One license per account: its plan, its status, the window in which it is
valid, entitlements and limit overrides beyond the plan, and free-form
attributes that policy conditions can test (``license.<key>``).

The binary record is the one the matchers read in place from the memory map;
``docs/internals.md`` gives the layout byte by byte.
"""

import json
import math
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone

from jitauth.model import LicenseStatus

FORMAT_VERSION = 1
NO_LOWER_BOUND = -(2**63)
NO_UPPER_BOUND = 2**63 - 1

# XXX: strings in a record carry a u16 length; the loader rejects longer
# ones (and more than 65,535 entries of a kind) rather than truncating.
MAX_STRING_BYTES = 0xFFFF
MAX_ENTRIES = 0xFFFF

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
