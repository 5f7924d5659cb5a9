"""The domain vocabulary shared by the engine, the store and the server.

The numeric values of the enums are the wire values of the matching enums in
``proto/jitauth/v1/authorizer.proto``; they are stable and never reused.
"""

from dataclasses import dataclass, field
from enum import IntEnum


class Reason(IntEnum):
    """Why a decision came out the way it did."""

    ALLOWED_BY_RULE = 1
    NO_LICENSE = 2
    LICENSE_INACTIVE = 3
    LICENSE_EXPIRED = 4
    LICENSE_NOT_YET_VALID = 5
    NOT_ENTITLED = 6
    DENIED_BY_RULE = 7
    NO_MATCHING_RULE = 8
    CONCURRENCY_LIMIT_REACHED = 9
    QUOTA_EXHAUSTED = 10


class LicenseStatus(IntEnum):
    ACTIVE = 1
    SUSPENDED = 2
    REVOKED = 3


class GrantState(IntEnum):
    """A grant is live until it is completed, expires or is revoked."""

    LIVE = 1
    COMPLETED = 2
    EXPIRED = 3
    REVOKED = 4


class Outcome(IntEnum):
    """How the caller says the approved action ended."""

    SUCCESS = 1
    FAILURE = 2
    CANCELLED = 3


@dataclass(slots=True)
class AuthorizeInput:
    """One question: may this subject of this account do this, now?"""

    account_id: str
    subject_id: str
    action: str
    resource_type: str = ""
    resource_id: str = ""
    roles: tuple = ()
    subject_attributes: dict = field(default_factory=dict)
    resource_attributes: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)
    request_id: str = ""
    units: int = 0          # quota units to reserve; 0: the rule's default
    dry_run: bool = False   # decide only: no grant, no reservation
    explain: bool = False   # return the evaluation trace


@dataclass(slots=True)
class AuthorizeResult:
    allowed: bool
    reason: Reason
    message: str
    decision_id: str
    revision: int
    rule_id: str = ""
    grant_id: str = ""
    expires_at_ms: int = 0
    retry_after_ms: int = 0     # seats and quotas: when trying again helps
    units: int = 0              # quota units reserved by the grant
    replayed: bool = False      # an earlier answer to the same request_id
    dry_run: bool = False
    explanation: list = field(default_factory=list)


@dataclass(slots=True)
class CompleteResult:
    """The grant's final state after a Complete call.

    ``already`` is true when the grant had left the live state before this
    call (completed, expired or revoked); nothing was changed then.
    """

    grant_id: str
    state: GrantState
    already: bool
    outcome: Outcome | None
    account_id: str
    action: str
    issued_at_ms: int
    expires_at_ms: int
    ended_at_ms: int
    units: int = 0          # quota units the grant reserved
    consumed: int = 0       # of which consumed once settled


class InvalidInput(ValueError):
    """A request field is malformed; ``field`` names it (``subject.id``)."""

    def __init__(self, field: str, message: str):
        super().__init__("%s: %s" % (field, message))
        self.field = field
        self.message = message


class GrantNotFound(LookupError):
    """No grant with this id exists (or it was purged long after it ended)."""


class Unavailable(RuntimeError):
    """The data cannot be read; the server must not decide (fail closed)."""
