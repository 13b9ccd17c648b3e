"""What kind of account the simulated exchange serves, and how its REST paging behaves.

- **Classic** (non-unified) account (BYBIT_V5.md §12): an empty position's side is the
  string ``"None"`` (REST and pushes), and it has no USDC contracts and no options:
  ``position/list`` for ``settleCoin=USDC``, a USDC symbol or ``category=option``
  answers 10001.
- **Paging**: ``normal`` ends with ``nextPageCursor: ""``; ``last_page_cursor`` gives the
  last page a cursor (as the recorded ``position/list`` page does) and answers that cursor
  with an empty page carrying the same cursor again; ``repeat_last_page`` answers that
  cursor with the rows up to it again (a page's worth) and the same cursor; ``endless`` never stops handing out
  new cursors (the rows up to the cursor again, each time with a fresh cursor), the storm a
  client must bound.
- **Rate limit**: per endpoint, a rolling window; every answer carries ``X-Bapi-Limit``,
  ``X-Bapi-Limit-Status`` (remaining) and ``X-Bapi-Limit-Reset-Timestamp`` (epoch ms);
  past the limit ``position/list`` answers 10006 ``Too many visits!``.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final

import attrs


class Paging(enum.Enum):
    NORMAL = "normal"
    LAST_PAGE_CURSOR = "last_page_cursor"
    REPEAT_LAST_PAGE = "repeat_last_page"
    ENDLESS = "endless"


#: Bybit's per-UID limits for the endpoints we serve: (requests, window seconds).
#: Market endpoints have only the IP limit (600 per 5 s), reported the same way.
RATE_LIMITS: Final = {"/v5/position/list": (50, 1.0)}
IP_LIMIT: Final = (600, 5.0)
#: what Classic accounts lack (settle coins of linear, categories)
CLASSIC_MISSING_COINS: Final = frozenset({"USDC"})
CLASSIC_MISSING_CATEGORIES: Final = frozenset({"option"})


@attrs.define(eq=False)
class Account:
    classic: bool = False
    paging: Paging = Paging.NORMAL
    #: enforce RATE_LIMITS with 10006 (the headers are sent either way)
    enforce_rate_limits: bool = True
    _calls: dict[str, deque[float]] = attrs.Factory(dict)

    def lacks(self, category: str, settle_coin: str | None) -> bool:
        """Whether this account has no such positions (a Classic account: USDC, option)."""
        return self.classic and (category in CLASSIC_MISSING_CATEGORIES or settle_coin in CLASSIC_MISSING_COINS)

    def side(self, side: str) -> str:
        return "None" if self.classic and side == "" else side

    def count_call(self, path: str, now: float) -> tuple[int, int, float, bool]:
        """Count a call to ``path`` at trio time ``now``: ``(limit, remaining, seconds until the
        window resets, allowed)``."""
        limit, window = RATE_LIMITS.get(path, IP_LIMIT)
        calls = self._calls.setdefault(path, deque())
        while calls and calls[0] <= now - window:
            calls.popleft()
        allowed = len(calls) < limit or not self.enforce_rate_limits or path not in RATE_LIMITS
        if allowed:
            calls.append(now)
        reset_in = (calls[0] + window - now) if calls else window
        return limit, max(0, limit - len(calls)), reset_in, allowed
