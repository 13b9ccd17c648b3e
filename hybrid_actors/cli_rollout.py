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
from .rollout import MODES, RolloutPolicy, resolve_mode

__all__ = ["add_rollout_options", "rollout_settings"]


def add_rollout_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "rollout", "which source feeds the output, and when production falls back to REST (README: Rollout)")
    group.add_argument("--mode", default=None, metavar="|".join(MODES),
                       help="rest: REST polling only; canary: REST feeds the output, the hybrid stream runs "
                            "monitor-only; parallel: canary plus REST/WS mark comparison; production: the hybrid "
                            "stream (default: $HYBRID_MODE, else production)")
    group.add_argument("--rest-interval", default="5", metavar="SECONDS",
                       help="position/list poll interval while REST feeds positions (default 5)")
    group.add_argument("--cutover-percent", default="100", metavar="P",
                       help="production: this stable, hash-chosen share of positions goes through the hybrid "
                            "stream, the rest through REST (default 100)")
    group.add_argument("--divergence-threshold", default="1%", metavar="PERCENT",
                       help="parallel: a REST/WS mark difference over this counts as a divergence (default 1%%)")
    group.add_argument("--stale-after", default="3", metavar="SECONDS|off",
                       help="production: a live mark older than this is replaced by REST ticker marks every "
                            "second until live ticks return (default 3)")
    group.add_argument("--rollback-after-disconnect", default="300", metavar="SECONDS|off",
                       help="production: roll back to REST when every socket has been down this long (default 300)")
    group.add_argument("--rollback-after-silence", default="300", metavar="SECONDS|off",
                       help="production: roll back when no event came for this long with positions open "
                            "(default 300)")
    group.add_argument("--rollback-sub-failures", default="10", metavar="N|off",
                       help="production: roll back after more than N subscription failures within an hour "
                            "(default 10)")
    group.add_argument("--no-rollback-on-crash-loop", action="store_true",
                       help="production: a crash-looping actor ends the stream instead of rolling back")
    group.add_argument("--auto-return", default="off", metavar="SECONDS|off",
                       help="production: return to the hybrid stream after this long of healthy hybrid "
                            "(default off: stay on REST after a rollback)")


def _seconds(args: argparse.Namespace, name: str, *, optional: bool) -> float | None:
    raw = str(getattr(args, name)).strip()
    flag = "--" + name.replace("_", "-")
    if optional and raw.lower() == "off":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{flag} {raw!r} is not a number of seconds{' or off' if optional else ''}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{flag} must be a positive number of seconds, got {raw!r}")
    return value


def rollout_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``mode`` and ``rollout`` for :class:`~hybrid_actors.config.StreamConfig` from the flags."""
    mode = resolve_mode(args.mode, os.environ)
    raw = str(args.divergence_threshold).strip()
    try:
        percent = Decimal(raw.removesuffix("%").strip())
    except InvalidOperation:
        raise ConfigError(f"--divergence-threshold {raw!r} is not a percentage such as 1 or 0.5%") from None
    raw_cutover = str(args.cutover_percent).strip().removesuffix("%")
    try:
        cutover = float(raw_cutover)
    except ValueError:
        raise ConfigError(f"--cutover-percent {args.cutover_percent!r} is not a percentage") from None
    raw_failures = str(args.rollback_sub_failures).strip()
    failures: int | None
    if raw_failures.lower() == "off":
        failures = None
    elif raw_failures.isdigit() and int(raw_failures) > 0:
        failures = int(raw_failures)
    else:
        raise ConfigError(f"--rollback-sub-failures {raw_failures!r} must be a positive integer or off")
    try:
        policy = RolloutPolicy(
            rest_interval=_seconds(args, "rest_interval", optional=False),
            cutover_percent=cutover, divergence_threshold=percent / 100,
            stale_after=_seconds(args, "stale_after", optional=True),
            rollback_after_disconnect=_seconds(args, "rollback_after_disconnect", optional=True),
            rollback_after_silence=_seconds(args, "rollback_after_silence", optional=True),
            rollback_sub_failures=failures, rollback_on_crash_loop=not args.no_rollback_on_crash_loop,
            auto_return=_seconds(args, "auto_return", optional=True))
    except ConfigError as exc:
        raise ConfigError(f"{exc} (check the rollout flags: --divergence-threshold is a percentage, "
                          "--cutover-percent 0..100)") from None
    return {"mode": mode, "rollout": policy}
