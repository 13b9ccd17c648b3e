"""The rollout's command-line flags (``run`` and ``demo``): ``--mode`` and the RolloutPolicy knobs.

Bad values become :class:`~hybrid_actors.errors.ConfigError` (exit code 2), with the flag's
name in the message. ``--mode`` falls back to ``HYBRID_MODE``, then production.
"""

from __future__ import annotations

import argparse
import os
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ConfigError
from .rollout import MAX_AUTO_RETURN, MIN_POLL_INTERVAL, MODES, RolloutPolicy, resolve_mode

__all__ = ["add_rollout_options", "rollout_settings"]


def add_rollout_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "rollout", "which source feeds the output, and when production falls back to REST (README: Rollout)")
    group.add_argument("--mode", default=None, metavar="|".join(MODES),
                       help="rest: REST polling only; canary: REST feeds the output, the hybrid stream runs "
                            "monitor-only; parallel: canary plus REST/WS mark comparison; production: the hybrid "
                            "stream (default: $HYBRID_MODE, else production)")
    group.add_argument("--rest-interval", type=float, default=5.0, metavar="SECONDS",
                       help=f"position/list poll interval while REST feeds positions (default 5, at least "
                            f"{MIN_POLL_INTERVAL:g})")
    group.add_argument("--cutover-percent", type=float, default=100.0, metavar="P",
                       help="production: this stable, hash-chosen share of positions goes through the hybrid "
                            "stream, the rest through REST (default 100)")
    group.add_argument("--divergence-threshold", default="1", metavar="PERCENT",
                       help="parallel: a REST/WS mark difference over this many percent counts as a divergence "
                            "(default 1; '0.5%%' works too)")
    group.add_argument("--stale-after", type=float, default=3.0, metavar="SECONDS",
                       help="production: a live mark older than this is replaced by REST ticker marks every "
                            "second until live ticks return (default 3; 0: never)")
    group.add_argument("--rollback-after-disconnect", type=float, default=300.0, metavar="SECONDS",
                       help="production: roll back to REST when every socket has been down this long "
                            "(default 300; 0: never)")
    group.add_argument("--rollback-after-silence", type=float, default=300.0, metavar="SECONDS",
                       help="production: roll back when no event came for this long with positions open "
                            "(default 300; 0: never)")
    group.add_argument("--rollback-sub-failures", type=int, default=10, metavar="N",
                       help="production: roll back after more than N subscription failures within an hour, "
                            "or while more than half of the held symbols are refused (default 10; 0: never)")
    group.add_argument("--no-rollback-on-crash-loop", action="store_true",
                       help="production: a crash-looping actor ends the stream instead of rolling back")
    group.add_argument("--auto-return", type=float, default=0.0, metavar="SECONDS",
                       help="production: return to the hybrid stream after this long of healthy hybrid "
                            f"(at most {MAX_AUTO_RETURN:g}, a day; default 0: stay on REST after a rollback)")


def _off_if_zero(args: argparse.Namespace, name: str) -> float | None:
    """0 turns the setting off; a negative value is an error naming the flag."""
    value: float = getattr(args, name)  # every flag read here is declared type=float
    if value == 0:
        return None
    if not value > 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds (or 0: off), "
                          f"got {value!r}")
    return value


def rollout_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``mode`` and ``rollout`` for :class:`~hybrid_actors.config.StreamConfig` from the flags."""
    mode = resolve_mode(args.mode, os.environ)
    raw = str(args.divergence_threshold).strip()
    try:
        percent = Decimal(raw.removesuffix("%").strip())
    except InvalidOperation:
        raise ConfigError(f"--divergence-threshold {raw!r} is not a percentage such as 1 or 0.5%") from None
    if not percent.is_finite() or not 0 < percent < 100:
        raise ConfigError(f"--divergence-threshold must be a percentage within (0, 100), got {raw!r}")
    if args.rollback_sub_failures < 0:
        raise ConfigError(f"--rollback-sub-failures must be >= 0 (0: off), got {args.rollback_sub_failures}")
    if not args.rest_interval > 0:
        raise ConfigError(f"--rest-interval must be a positive number of seconds, got {args.rest_interval!r}")
    if not args.rest_interval >= MIN_POLL_INTERVAL:
        raise ConfigError(f"--rest-interval must be at least {MIN_POLL_INTERVAL:g} second (faster polling runs "
                          f"into Bybit's rate limit), got {args.rest_interval!r}")
    auto_return = _off_if_zero(args, "auto_return")
    if auto_return is not None and auto_return > MAX_AUTO_RETURN:
        raise ConfigError(f"--auto-return must be at most {MAX_AUTO_RETURN:g} seconds (a day; 0: off), "
                          f"got {args.auto_return!r}")
    if not 0 <= args.cutover_percent <= 100:
        raise ConfigError(f"--cutover-percent must be within 0..100, got {args.cutover_percent!r}")
    policy = RolloutPolicy(
        rest_interval=args.rest_interval, cutover_percent=args.cutover_percent,
        divergence_threshold=percent / 100, stale_after=_off_if_zero(args, "stale_after"),
        rollback_after_disconnect=_off_if_zero(args, "rollback_after_disconnect"),
        rollback_after_silence=_off_if_zero(args, "rollback_after_silence"),
        rollback_sub_failures=args.rollback_sub_failures or None,
        rollback_on_crash_loop=not args.no_rollback_on_crash_loop,
        auto_return=auto_return)
    return {"mode": mode, "rollout": policy}
