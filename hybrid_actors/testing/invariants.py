"""What "nothing lost" means, checked the same way by the fault matrix and the soak script.

Pure: plain values in, a list of human-readable mismatches out (empty = all good).

- :func:`position_mismatches`: the client's open positions equal the exchange's, by
  ``(category, symbol, position_idx)``: same side and size.
- :func:`lifecycle` / :func:`lifecycle_mismatches`: per position, the opens and closes the
  client saw, in order, equal the ones the exchange made (a journal the driver kept).
- :func:`lifecycle_anomalies`: without a journal (the soak's exchange acts on its own), the
  client's own sequence must still make sense: never closed twice, never opened twice
  without a close in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import trio

from ..state import PositionClosed, PositionUpdate

__all__ = ["Key", "position_mismatches", "LifecycleTracker", "lifecycle", "lifecycle_mismatches", "lifecycle_anomalies",
           "task_count", "task_names"]

Key = tuple[str, str, int]
#: side, size
Holding = tuple[str, Decimal]


def position_mismatches(exchange: Mapping[Key, Holding], client: Mapping[Key, Holding]) -> list[str]:
    """Every position that differs between the exchange and the client."""
    problems = []
    for key in sorted(set(exchange) | set(client)):
        want, got = exchange.get(key), client.get(key)
        if want != got:
            problems.append(f"{'/'.join(map(str, key))}: exchange {_show(want)}, client {_show(got)}")
    return problems


def _show(holding: Holding | None) -> str:
    return "flat" if holding is None else f"{holding[0]} {holding[1]}"


class LifecycleTracker:
    """:func:`lifecycle`, fed as events arrive (a long run need not keep its events)."""

    def __init__(self) -> None:
        self.steps: dict[Key, list[str]] = {}
        self._open: set[Key] = set()

    def feed(self, events: Iterable[Any]) -> None:
        for event in events:
            if isinstance(event, PositionClosed):
                self.steps.setdefault(event.key, []).append("close")
                self._open.discard(event.key)
            elif isinstance(event, PositionUpdate) and event.key not in self._open:
                self.steps.setdefault(event.key, []).append("open")
                self._open.add(event.key)


def lifecycle(events: Iterable[Any]) -> dict[Key, list[str]]:
    """Per position, "open" / "close" in the order the client's events said so. A
    ``position.update`` for a position not open is an open; a ``position.closed`` is a close."""
    tracker = LifecycleTracker()
    tracker.feed(events)
    return tracker.steps


def lifecycle_mismatches(journal: Mapping[Key, list[str]], seen: Mapping[Key, list[str]]) -> list[str]:
    """Positions whose opens and closes the client saw differently from the exchange's journal."""
    problems = []
    for key in sorted(set(journal) | set(seen)):
        want, got = journal.get(key, []), seen.get(key, [])
        if want != got:
            problems.append(f"{'/'.join(map(str, key))}: exchange {want}, client {got}")
    return problems


def lifecycle_anomalies(seen: Mapping[Key, list[str]]) -> list[str]:
    """Sequences no exchange can produce: a close first or twice, two opens in a row."""
    problems = []
    for key, steps in sorted(seen.items()):
        previous = "close"
        for index, step in enumerate(steps):
            if step == previous:
                problems.append(f"{'/'.join(map(str, key))}: {step} twice in a row (step {index})")
                break
            previous = step
    return problems


def task_count() -> int:
    """Every task in the current trio run (the whole tree from the root task): what a long
    run must not grow."""
    return sum(task_names().values())


def task_names() -> dict[str, int]:
    """How many tasks of each name the current trio run has (the whole tree): where a change
    in :func:`task_count` comes from (a leak, or a task that waits in a child nursery at one
    moment and not at another)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None, "trio's root task exists as long as any task of the run does"
    names: dict[str, int] = {}
    stack = [root]
    while stack:
        task = stack.pop()
        names[task.name] = names.get(task.name, 0) + 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return dict(sorted(names.items()))
