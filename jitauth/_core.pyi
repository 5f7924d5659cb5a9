"""Type stub of the compiled core ``jitauth._core`` (ext/core.pyx)."""

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from typing_extensions import Buffer

from jitauth.licenses import CorruptRecord as CorruptRecord
from jitauth.model import Reason

class StoreError(Exception):
    """LMDB refused an operation; the message carries LMDB's own text."""

class StoreFull(StoreError):
    """The environment reached its map size; nothing of the write was kept."""

class Environment:
    """An LMDB environment (a directory holding ``data.mdb``/``lock.mdb``)."""

    path: str
    readonly: bool
    dbs: dict[str, int]
    def __init__(
        self,
        path: str,
        dbs: Iterable[str],
        *,
        map_size: int = ...,
        max_readers: int = ...,
        sync: bool = True,
        readonly: bool = False,
    ) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def begin(self, *, write: bool = False) -> Transaction: ...
    def sync(self, force: bool = True) -> None: ...
    def reader_check(self) -> int: ...

class Transaction:
    """A read or write transaction; values come back as ``bytes`` copies."""

    write: bool
    def __enter__(self) -> Transaction: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def get(self, dbi: int, key: Buffer) -> bytes | None: ...
    def put(self, dbi: int, key: Buffer, value: Buffer) -> None: ...
    def delete(self, dbi: int, key: Buffer) -> bool: ...
    def clear(self, dbi: int) -> None: ...
    def items(
        self,
        dbi: int,
        prefix: bytes = b"",
        limit: int = -1,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]: ...

# (reason, rule_index, limit_max); reason is 0 (int) when the stored
# revision is not the matcher's (match_stored only).
Decision = tuple[Reason | int, int, int]

class Matcher:
    """Decide requests against one revision of the compiled policy."""

    revision: int
    rule_ids: list[str]
    timezones: list[str]
    has_time_conditions: bool
    def __init__(self, policy: dict, revision: int) -> None: ...
    def rule_info(self, index: int) -> tuple[str, str, int, str | None]:
        """``(id, effect, ttl_ms, limit)`` of the rule at ``index``."""
    def match(
        self,
        license: Buffer | None,
        account_id: str,
        subject_id: str,
        roles: Sequence[str] | None,
        subject_attributes: Mapping[str, str] | None,
        action: str,
        resource_type: str,
        resource_id: str,
        resource_attributes: Mapping[str, str] | None,
        context: Mapping[str, str] | None,
        now_ms: int,
        tz_offsets: Sequence[int] | None = None,
    ) -> Decision: ...
    def match_stored(
        self,
        env: Environment,
        meta_dbi: int,
        licenses_dbi: int,
        account_id: str,
        subject_id: str,
        roles: Sequence[str] | None,
        subject_attributes: Mapping[str, str] | None,
        action: str,
        resource_type: str,
        resource_id: str,
        resource_attributes: Mapping[str, str] | None,
        context: Mapping[str, str] | None,
        now_ms: int,
    ) -> Decision: ...
