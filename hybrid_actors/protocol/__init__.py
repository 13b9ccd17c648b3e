"""Sans-IO Bybit v5 codec: no trio, no sockets, no clocks (time is an argument).

- :mod:`.frames`   server frames → frozen values (:func:`decode` never raises)
- :mod:`.client`   client frames: auth, subscribe/unsubscribe (chunked), JSON ping
- :mod:`.session`  per-connection state: auth state table, req_id correlation, args budget
- :mod:`.rest`     signed REST requests and parsed responses, retCode → exceptions
- :mod:`.signing`  HMAC-SHA256 for WebSocket auth and REST
"""

from .client import auth_frame as auth_frame
from .client import chunk_topics as chunk_topics
from .client import ping_frame as ping_frame
from .client import request_frame as request_frame
from .client import symbol_of_topic as symbol_of_topic
from .client import ticker_topic as ticker_topic
from .fields import FieldError as FieldError
from .fields import dec as dec
from .frames import AuthResult as AuthResult
from .frames import Frame as Frame
from .frames import MalformedFrame as MalformedFrame
from .frames import Pong as Pong
from .frames import Position as Position
from .frames import PositionPush as PositionPush
from .frames import SubscribeFailure as SubscribeFailure
from .frames import SubscribeResult as SubscribeResult
from .frames import TickerDelta as TickerDelta
from .frames import TickerFrame as TickerFrame
from .frames import TickerSnapshot as TickerSnapshot
from .frames import UnknownFrame as UnknownFrame
from .frames import decode as decode
from .session import AckOutcome as AckOutcome
from .session import ArgsBudget as ArgsBudget
from .session import Request as Request
from .session import Session as Session
from .session import SessionState as SessionState
