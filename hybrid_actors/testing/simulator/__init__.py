"""A local Bybit v5 exchange with fault injection, for tests, benchmarks and the demo.

::

    async with open_simulator(SimulatorConfig(symbols=20, positions=3, seed=1)) as sim:
        sim.url("linear")            # ws://127.0.0.1:PORT/v5/public/linear
        sim.control.open_position("BTCUSDT", "Buy", "0.5")
        await sim.observe.wait_subscribed("linear", ["BTCUSDT"])

Modules: ``config`` (SimulatorConfig), ``instruments`` (known symbols), ``market`` (price
model and the one ticker task), ``positions`` (book and wire records), ``public`` /
``private`` (socket protocols), ``wire`` (control-frame shapes), ``connection``,
``exchange`` (state hub), ``server`` (trio-websocket), ``rest_http`` (h11) and
``rest_api`` (endpoints), ``faults``, ``control``, ``observe``, ``scenario``, ``app``.
"""

from .app import Simulator as Simulator, open_simulator as open_simulator
from .config import (DEFAULT_API_KEY as DEFAULT_API_KEY, DEFAULT_API_SECRET as DEFAULT_API_SECRET,
                     ScenarioConfig as ScenarioConfig, SimulatorConfig as SimulatorConfig)
from .control import Control as Control
from .faults import DropMode as DropMode, InjectKind as InjectKind
from .observe import (AuthAttempt as AuthAttempt, ConnectionInfo as ConnectionInfo,
                      HandshakeRecord as HandshakeRecord, Observer as Observer, PingRecord as PingRecord,
                      RequestRecord as RequestRecord, RestCall as RestCall, SentFrame as SentFrame)
from .positions import Position as Position
from .wallclock import trio_wall_clock as trio_wall_clock

__all__ = [
    "AuthAttempt", "ConnectionInfo", "Control", "DEFAULT_API_KEY", "DEFAULT_API_SECRET", "DropMode",
    "HandshakeRecord", "InjectKind", "Observer", "PingRecord", "Position", "RequestRecord", "RestCall",
    "ScenarioConfig", "SentFrame", "Simulator", "SimulatorConfig", "open_simulator", "trio_wall_clock",
]
