"""Wall-clock time for ``time`` conditions: UTC offsets of named zones.

A policy's time windows are written in local time of a named zone
(``Europe/Berlin``).  The matchers take, for each zone of the compiled
policy, its offset from UTC in minutes at the moment of the decision;
``tz_offsets`` computes that list once per decision.

Offsets are cached per zone for the current UTC minute: tzdata transitions
fall on whole minutes (every one since the local-mean-time era, which ended
before 1900), so the offset at the start of a minute holds for all of it.
A warm call is a dictionary look-up per zone.
"""

import zoneinfo
from collections.abc import Sequence
from datetime import datetime

_MINUTE_MS = 60_000

# XXX: the cache is cleared whole when it reaches this many zones; a policy
# names a handful, so this only bounds memory against misuse.
MAX_CACHED_ZONES = 512

# zone name -> (UTC minute since the epoch, offset in minutes)
_offsets: dict = {}


def _offset_at(name: str, minute: int) -> tuple:
    moment = datetime.fromtimestamp(minute * 60, zoneinfo.ZoneInfo(name))
    seconds = int(moment.utcoffset().total_seconds())
    entry = (minute, seconds // 60)

    if len(_offsets) >= MAX_CACHED_ZONES:
        _offsets.clear()
    _offsets[name] = entry
    return entry


def tz_offsets(timezones: Sequence[str], now_ms: int) -> list[int]:
    """Each zone's UTC offset in whole minutes at ``now_ms``.

    ``timezones`` are IANA names (``zoneinfo``); an unknown name raises
    ``zoneinfo.ZoneInfoNotFoundError``.  Offsets with a seconds part
    (local mean time before 1900) are rounded down to the minute.
    """
    minute = now_ms // _MINUTE_MS
    out = []
    for name in timezones:
        entry = _offsets.get(name)
        if entry is None or entry[0] != minute:
            entry = _offset_at(name, minute)
        out.append(entry[1])
    return out
