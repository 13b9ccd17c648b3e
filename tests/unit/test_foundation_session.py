"""The per-connection sans-IO Session: auth state table, chunking, req_id correlation,
ack interpretation, the args budget and overdue requests."""

from __future__ import annotations

import json

import pytest

from foundation_helpers import load_vector
from hybrid_actors.config import OPTION_MAX_ARGS_PER_CONNECTION, PUBLIC_ARGS_CHAR_BUDGET
from hybrid_actors.errors import LocalProtocolError
from hybrid_actors.protocol.client import chunk_topics, max_args_per_request, symbol_of_topic, ticker_topic
from hybrid_actors.protocol.frames import AuthResult, SubscribeResult, decode
from hybrid_actors.protocol.session import ArgsBudget, Session, SessionState

pytestmark = pytest.mark.unit


def topics(n: int, prefix: str = "tickers.S") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def ack(request_or_id, *, success: bool = True, ret_msg: str = "", op: str = "subscribe") -> SubscribeResult:
    req_id = request_or_id if isinstance(request_or_id, str) or request_or_id is None else request_or_id.req_id
    frame = {"success": success, "ret_msg": ret_msg, "conn_id": "c", "op": op}
    if req_id is not None:
        frame["req_id"] = req_id
    decoded = decode(json.dumps(frame))
    assert isinstance(decoded, SubscribeResult)
    return decoded


def command_resp(ok: list[str], failed: list[str]) -> SubscribeResult:
    decoded = decode(json.dumps({"success": True, "conn_id": "c", "type": "COMMAND_RESP",
                                 "data": {"successTopics": ok, "failTopics": failed}}), category="option")
    assert isinstance(decoded, SubscribeResult)
    return decoded


def authenticated() -> Session:
    session = Session(None)
    session.auth("key", "secret", 1_700_000_000_000)
    session.receive_auth(AuthResult(True, ""))
    return session


# --- private auth state table ---------------------------------------------------------

def test_private_session_walks_the_auth_table():
    session = Session(None)
    assert session.is_private and session.state is SessionState.NEW
    with pytest.raises(LocalProtocolError, match="before the auth ack"):
        session.subscribe(["position"], now=0.0)
    frame = json.loads(session.auth("key", "secret", 1_700_000_000_000))
    assert frame["op"] == "auth" and session.state is SessionState.AUTHENTICATING
    with pytest.raises(LocalProtocolError, match="Request not authorized"):
        session.subscribe(["position"], now=0.0)  # the nautilus reconnect race
    session.receive_auth(decode(json.dumps(load_vector("auth_ok")["messages"][0])))  # type: ignore[arg-type]
    assert session.state is SessionState.AUTHENTICATED
    (request,), refused = session.subscribe(["position"], now=1.0)
    assert refused == [] and json.loads(request.text) == {"req_id": request.req_id, "op": "subscribe",
                                                          "args": ["position"]}


@pytest.mark.parametrize("answered", [False, True])
def test_auth_is_sent_once(answered):
    session = Session(None)
    session.auth("key", "secret", 1)
    if answered:
        session.receive_auth(AuthResult(True, ""))
    with pytest.raises(LocalProtocolError, match="auth is sent once"):
        session.auth("key", "secret", 2)


def test_a_rejected_auth_blocks_subscribing():
    session = Session(None)
    session.auth("key", "secret", 1)
    session.receive_auth(decode(json.dumps(load_vector("auth_fail")["messages"][0])))  # type: ignore[arg-type]
    assert session.state is SessionState.REJECTED
    with pytest.raises(LocalProtocolError):
        session.subscribe(["position"], now=0.0)
    with pytest.raises(LocalProtocolError):
        session.auth("key", "secret", 2)


def test_an_auth_answer_nobody_asked_for_is_our_bug():
    with pytest.raises(LocalProtocolError):
        Session(None).receive_auth(AuthResult(True, ""))
    with pytest.raises(LocalProtocolError):
        authenticated().receive_auth(AuthResult(True, ""))
    with pytest.raises(LocalProtocolError):
        Session("linear").receive_auth(AuthResult(True, ""))


def test_public_sessions_need_no_auth_and_refuse_one():
    session = Session("linear")
    assert session.state is SessionState.OPEN and not session.is_private
    assert session.subscribe(["tickers.BTCUSDT"], now=0.0)[0]
    with pytest.raises(LocalProtocolError):
        session.auth("key", "secret", 1)


# --- chunking -----------------------------------------------------------------------

@pytest.mark.parametrize(("category", "chunk_size", "n", "sizes"), [
    ("spot", 50, 25, [10, 10, 5]),
    ("spot", 4, 9, [4, 4, 1]),
    ("linear", 50, 120, [50, 50, 20]),
    ("inverse", 3, 7, [3, 3, 1]),
    ("option", 10, 10, [10]),
    ("linear", 200, 11, [11]),  # linear accepts more than 10 per request
])
def test_chunking(category, chunk_size, n, sizes):
    session = Session(category, chunk_size=chunk_size)
    requests, refused = session.subscribe(topics(n), now=0.0)
    assert refused == [] and [len(r.topics) for r in requests] == sizes
    assert [t for r in requests for t in r.topics] == topics(n)  # order kept, nothing lost
    assert len({r.req_id for r in requests}) == len(requests)
    for request in requests:
        assert json.loads(request.text) == {"req_id": request.req_id, "op": "subscribe", "args": list(request.topics)}
    assert session.pending == tuple(requests)
    assert [len(r.topics) for r in session.unsubscribe(topics(n), now=1.0)] == sizes


def test_max_args_per_request_and_chunk_topics():
    assert max_args_per_request("spot", 50) == 10 and max_args_per_request("spot", 5) == 5
    assert max_args_per_request("linear", 50) == 50 and max_args_per_request(None, 7) == 7
    assert chunk_topics([], 3) == []
    with pytest.raises(ValueError):
        chunk_topics(["a"], 0)
    assert ticker_topic("BTCUSDT") == "tickers.BTCUSDT" and symbol_of_topic("tickers.BTCUSDT") == "BTCUSDT"
    assert symbol_of_topic("position") is None


def test_duplicate_topics_in_one_call_are_sent_once():
    (request,), _ = Session("linear").subscribe(["tickers.A", "tickers.B", "tickers.A"], now=0.0)
    assert request.topics == ("tickers.A", "tickers.B")


def test_ping_ids_are_unique():
    session = Session("linear", id_prefix="x")
    (id1, text1), (id2, _) = session.ping(), session.ping()
    assert id1 != id2 and json.loads(text1) == {"req_id": id1, "op": "ping"}


# --- req_id correlation -------------------------------------------------------------

def test_acks_are_matched_by_req_id_in_any_order():
    session = Session("linear", chunk_size=1)
    first, second, third = session.subscribe(["tickers.A", "tickers.B", "tickers.C"], now=0.0)[0]
    outcome = session.receive_ack(ack(second))
    assert outcome is not None and outcome.request == second and outcome.confirmed == ("tickers.B",)
    assert session.pending == (first, third)
    assert session.receive_ack(ack(third)).request == third  # type: ignore[union-attr]
    assert session.receive_ack(ack(first)).request == first  # type: ignore[union-attr]
    assert session.receive_ack(ack(first)) is None  # nothing pending: unsolicited


def test_private_acks_without_req_id_are_matched_in_order():
    session = authenticated()
    (first,), _ = session.subscribe(["position.linear"], now=0.0)
    (second,), _ = session.subscribe(["position.inverse"], now=0.0)
    private_ack = decode(json.dumps(load_vector("subscribe_ok")["messages"][0]))  # no req_id
    assert session.receive_ack(private_ack).request == first  # type: ignore[arg-type, union-attr]
    assert session.receive_ack(private_ack).request == second  # type: ignore[arg-type, union-attr]
    assert session.receive_ack(private_ack) is None  # type: ignore[arg-type]


def test_an_ack_without_req_id_matches_only_its_own_op():
    session = Session("linear")
    (unsub,) = session.unsubscribe(["tickers.A"], now=0.0)
    (sub,), _ = session.subscribe(["tickers.B"], now=0.0)
    assert session.receive_ack(ack(None, op="subscribe")).request == sub  # type: ignore[union-attr]
    assert session.receive_ack(ack(None, op="unsubscribe")).request == unsub  # type: ignore[union-attr]


def test_option_command_resp_is_matched_by_its_topics():
    session = Session("option", chunk_size=2)
    r1, r2 = session.subscribe(["tickers.A", "tickers.B", "tickers.C"], now=0.0)[0]
    outcome = session.receive_ack(command_resp(["tickers.C"], []))
    assert outcome is not None and outcome.request == r2 and outcome.confirmed == ("tickers.C",)
    outcome = session.receive_ack(command_resp(["tickers.A"], ["tickers.B"]))
    assert outcome is not None and outcome.request == r1
    assert outcome.confirmed == ("tickers.A",) and [t for t, _ in outcome.failed] == ["tickers.B"]
    assert outcome.unknown == ()


def test_the_vector_command_resp_confirms_its_topic():
    session = Session("option")
    (request,), _ = session.subscribe(["orderbook.100.BTC-6JAN23-18000-C"], now=0.0)
    frame = decode(json.dumps(load_vector("subscribe_ok")["messages"][3]), category="option")
    outcome = session.receive_ack(frame)  # type: ignore[arg-type]
    assert outcome is not None and outcome.request == request
    assert outcome.confirmed == ("orderbook.100.BTC-6JAN23-18000-C",) and outcome.failure is None


def test_a_late_ack_for_a_forgotten_request_does_not_answer_another():
    """Regression: an ack carrying the req_id of a request already given up on (overdue)
    was matched FIFO to the next pending request of the same op, confirming topics the
    exchange had not answered for."""
    session = Session("linear", chunk_size=1)
    (late,), _ = session.subscribe(["tickers.A"], now=0.0)
    assert session.overdue(now=10.0, timeout=10.0) == [late]
    (retry,), _ = session.subscribe(["tickers.B"], now=10.0)
    assert session.receive_ack(ack(late.req_id, success=False,
                                   ret_msg="error:handler not found,topic:tickers.A")) is None
    assert session.pending == (retry,)
    assert session.receive_ack(ack(retry)).confirmed == ("tickers.B",)  # type: ignore[union-attr]


def test_a_late_option_ack_naming_a_forgotten_request_s_topics_answers_nothing():
    """An option COMMAND_RESP has no req_id: matched by the topics it names. One naming only
    topics of a request already given up on must not be pinned on the next pending one
    (which would confirm B on A's success, and drop B's own refusal as unsolicited)."""
    session = Session("option", chunk_size=1)
    (late,), _ = session.subscribe(["tickers.A-OPT"], now=0.0)
    assert session.overdue(now=10.0, timeout=10.0) == [late]
    (retry,), _ = session.subscribe(["tickers.B-OPT"], now=10.0)
    assert session.receive_ack(command_resp(["tickers.A-OPT"], [])) is None
    assert session.pending == (retry,)
    outcome = session.receive_ack(command_resp([], ["tickers.B-OPT"]))
    assert outcome is not None and outcome.request == retry and [t for t, _ in outcome.failed] == ["tickers.B-OPT"]


def test_a_late_option_ack_naming_part_of_a_newer_frame_answers_nothing():
    """A late answer naming one topic that was asked again in a bigger frame must not be
    taken for that frame's answer: it would confirm the frame's other topics (one of them
    refused) and drop the frame's real answer as unsolicited."""
    session = Session("option", chunk_size=50)
    (late,), _ = session.subscribe(["tickers.X-OPT"], now=0.0)
    assert session.overdue(now=10.0, timeout=10.0) == [late]
    (retry,), _ = session.subscribe(["tickers.X-OPT", "tickers.BAD-OPT"], now=10.0)
    assert session.receive_ack(command_resp(["tickers.X-OPT"], [])) is None
    outcome = session.receive_ack(command_resp(["tickers.X-OPT"], ["tickers.BAD-OPT"]))
    assert outcome is not None and outcome.request == retry
    assert outcome.confirmed == ("tickers.X-OPT",) and [t for t, _ in outcome.failed] == ["tickers.BAD-OPT"]


# --- ack interpretation -------------------------------------------------------------

def three(category: str = "linear"):
    session = Session(category)
    (request,), _ = session.subscribe(["tickers.A", "tickers.B", "tickers.C"], now=0.0)
    return session, request


def test_success_confirms_every_topic():
    session, request = three()
    outcome = session.receive_ack(ack(request))
    assert outcome.confirmed == request.topics and outcome.failed == () and outcome.unknown == ()  # type: ignore[union-attr]
    assert outcome.failure is None  # type: ignore[union-attr]


def test_already_subscribed_confirms_the_named_topic_and_leaves_the_others_unknown():
    session, request = three()
    outcome = session.receive_ack(ack(request, success=False, ret_msg="error:already subscribed,topic:tickers.B"))
    assert outcome.confirmed == ("tickers.B",) and outcome.unknown == ("tickers.A", "tickers.C")  # type: ignore[union-attr]
    assert outcome.failed == () and outcome.failure.kind == "already_subscribed"  # type: ignore[union-attr]
    assert session.budget.fits("tickers.A")


def test_handler_not_found_fails_the_named_topic():
    session, request = three()
    outcome = session.receive_ack(ack(request, success=False, ret_msg="error:handler not found,topic:tickers.C"))
    assert [(t, f.kind) for t, f in outcome.failed] == [("tickers.C", "handler_not_found")]  # type: ignore[union-attr]
    assert outcome.unknown == ("tickers.A", "tickers.B") and outcome.confirmed == ()  # type: ignore[union-attr]


def test_handler_not_found_naming_another_topic_fails_nothing():
    session, request = three()
    outcome = session.receive_ack(ack(request, success=False, ret_msg="error:handler not found,topic:tickers.Z"))
    assert outcome.failed == () and outcome.unknown == request.topics  # type: ignore[union-attr]


def test_handler_not_found_on_a_single_topic_request_fails_it_even_unnamed():
    session = Session("linear")
    (request,), _ = session.subscribe(["tickers.NOPEUSDT"], now=0.0)
    outcome = session.receive_ack(ack(request, success=False, ret_msg="error:handler not found"))
    assert [t for t, _ in outcome.failed] == ["tickers.NOPEUSDT"]  # type: ignore[union-attr]


def test_spot_invalid_symbol_fails_the_named_topic():
    session, request = three("spot")
    outcome = session.receive_ack(ack(request, success=False, ret_msg="Invalid symbol :[tickers.B]"))
    assert [(t, f.kind) for t, f in outcome.failed] == [("tickers.B", "invalid_symbol")]  # type: ignore[union-attr]
    assert outcome.unknown == ("tickers.A", "tickers.C")  # type: ignore[union-attr]


@pytest.mark.parametrize("ret_msg", ["Params Error", "Request not authorized", "something new"])
def test_unattributable_failures_leave_every_topic_unknown(ret_msg):
    session, request = three("spot")
    outcome = session.receive_ack(ack(request, success=False, ret_msg=ret_msg))
    assert outcome.unknown == request.topics and outcome.confirmed == () and outcome.failed == ()  # type: ignore[union-attr]
    assert outcome.failure.ret_msg == ret_msg  # type: ignore[union-attr]
    assert session.budget.used_chars == 0


def test_an_unsubscribe_failure_still_means_gone():
    session = Session("linear")
    session.subscribe(["tickers.A", "tickers.B"], now=0.0)
    used = session.budget.used_chars
    (request,) = session.unsubscribe(["tickers.A", "tickers.B"], now=1.0)
    outcome = session.receive_ack(ack(request, success=False, ret_msg="error:not subscribed", op="unsubscribe"))
    assert outcome.confirmed == ("tickers.A", "tickers.B") and outcome.failure is not None  # type: ignore[union-attr]
    assert used == 24 and session.budget.used_chars == 0  # 9 characters + 2 quotes + 1 comma each


# --- args budget --------------------------------------------------------------------

def test_the_args_budget_is_21000_characters():
    assert PUBLIC_ARGS_CHAR_BUDGET == 21_000
    session = Session("linear", chunk_size=200)
    names = [f"tickers.{i:012d}" for i in range(914)]  # 20 characters each, 23 with quotes and comma
    requests, refused = session.subscribe(names, now=0.0)
    assert refused == [names[-1]] and session.budget.used_chars == 913 * 23 == 20_999
    assert sum(len(r.topics) for r in requests) == 913
    # a topic already held costs nothing more
    assert session.subscribe([names[0]], now=0.0)[1] == [] and session.budget.used_chars == 20_999


def test_the_budget_is_freed_by_unsubscribe_failure_and_overdue():
    session = Session("linear", chunk_size=1)
    (a, b, c), _ = session.subscribe(["tickers.AA", "tickers.BB", "tickers.CC"], now=0.0)
    session.receive_ack(ack(a))
    assert session.budget.used_chars == 39
    session.receive_ack(ack(b, success=False, ret_msg="Params Error"))  # unknown: not held
    assert session.budget.used_chars == 26
    assert session.overdue(now=5.0, timeout=5.0) == [c]
    assert session.budget.used_chars == 13
    (unsub,) = session.unsubscribe(["tickers.AA"], now=6.0)
    assert session.budget.used_chars == 13  # held until the exchange confirms
    session.receive_ack(ack(unsub, op="unsubscribe"))
    assert session.budget.used_chars == 0


def test_option_is_capped_at_2000_args():
    assert OPTION_MAX_ARGS_PER_CONNECTION == 2000
    session = Session("option", chunk_size=500)
    requests, refused = session.subscribe(topics(2001, "t"), now=0.0)
    assert refused == ["t2000"] and sum(len(r.topics) for r in requests) == 2000
    assert Session("linear", chunk_size=500).subscribe(topics(2001, "t"), now=0.0)[1] == []


def test_args_budget_unit():
    budget = ArgsBudget(max_chars=16, max_args=2)
    assert budget.fits("abcde")
    budget.add("abcde")
    budget.add("abcde")
    assert budget.used_chars == 8  # with its quotes and comma
    assert budget.fits("12345") and not budget.fits("123456")
    budget.add("12345")
    assert not budget.fits("x") and budget.fits("abcde")  # 2 args: full, but held topics fit
    budget.discard("abcde")
    budget.discard("never added")
    assert budget.used_chars == 8 and budget.fits("x")


# --- overdue ------------------------------------------------------------------------

def test_overdue_returns_and_forgets_only_requests_past_the_timeout():
    session = Session("linear", chunk_size=1)
    (old,), _ = session.subscribe(["tickers.A"], now=0.0)
    (new,), _ = session.subscribe(["tickers.B"], now=4.0)
    (gone,) = session.unsubscribe(["tickers.C"], now=1.0)
    assert session.overdue(now=9.9, timeout=10.0) == []
    assert session.overdue(now=11.0, timeout=10.0) == [old, gone]
    assert session.pending == (new,)
    assert session.overdue(now=14.0, timeout=10.0) == [new]
    assert session.pending == ()
