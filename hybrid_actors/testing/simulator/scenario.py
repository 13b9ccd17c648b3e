"""A seeded random life of positions for demos: opens, resizes and closes over (trio) time."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import trio

from .config import ScenarioConfig

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger(__name__)


def scenario_step(ex: Exchange, config: ScenarioConfig, rng: random.Random) -> str:
    """One random action; returns what it did ("open", "resize", "close" or "idle")."""
    live = [p for p in ex.book.all(open_only=True) if p.category in config.categories]
    roll = rng.random()
    if live and (roll < 0.35 or len(live) >= config.max_open):
        pos = rng.choice(live)
        ex.close_position(pos.category, pos.symbol, pos.position_idx)
        return "close"
    if live and roll < 0.55:
        pos = rng.choice(live)
        step = ex.market.require(pos.category, pos.symbol).instrument.qty_step
        new_size = max(step, pos.size + step * rng.choice((-5, -2, -1, 1, 2, 5)))
        ex.modify_position(pos.category, pos.symbol, position_idx=pos.position_idx, size=new_size)
        return "resize"
    if len(live) < config.max_open and ex.open_random_position(rng, config.categories, config.symbols) is not None:
        return "open"
    return "idle"


async def run_scenario(ex: Exchange, config: ScenarioConfig, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    rng = random.Random(ex.seed + 5 if config.seed is None else config.seed)
    task_status.started()
    while True:
        await trio.sleep(rng.uniform(config.min_interval, config.max_interval))
        action = scenario_step(ex, config, rng)
        log.debug("scenario: %s", action)
