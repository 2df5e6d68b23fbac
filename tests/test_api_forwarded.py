"""The API's conversions for forwarded requests, and the answers a forwarding failure gets."""

from __future__ import annotations

from walletd.api.errors import status_and_code
from walletd.api.forwarded import (
    call_from_request,
    reply_from_response,
    request_from_call,
    response_from_reply,
)
from walletd.api.server import TCP_PEER, PeerCred, Request, Response
from walletd.errors import ForwardOutcomeUnknown, OwnerDidNotAnswer


def test_a_forwarded_request_routes_on_the_owner_as_it_did_here() -> None:
    """Method, path, query, body and the path's segments survive the trip; an encoded `/` in an
    escrow id stays inside its segment (it cannot re-route the request to another endpoint)."""
    original = Request(
        method="POST",
        path="/v1/escrows/e1/balance",  # decoded from /v1/escrows/e1%2Fbalance
        query={"wait": "5"},
        headers={"content-type": "application/json"},
        body=b'{"password":"x"}',
        peer=PeerCred(pid=1, uid=2, gid=3),
        segments=("v1", "escrows", "e1/balance"),
    )
    call = call_from_request(original, escrow_id="e1/balance")
    assert call.escrow_id == "e1/balance"
    again = request_from_call(call, TCP_PEER)
    assert again.segments == ("v1", "escrows", "e1/balance")
    assert (again.method, again.path, again.query, again.body) == (
        "POST",
        "/v1/escrows/e1/balance",
        {"wait": "5"},
        b'{"password":"x"}',
    )
    assert again.peer == TCP_PEER
    assert "password" not in repr(call)


def test_a_reply_comes_back_as_the_owner_answered() -> None:
    """Status, body, content type and extra headers (e.g. `allow` on a 405) are kept."""
    response = Response(405, b"{}", "application/json", (("allow", "GET"),))
    assert response_from_reply(reply_from_response(response)) == response


def test_forwarding_failures_have_clear_codes() -> None:
    """A request the owner never took is `unavailable` (503: not run, retry is safe); one it took
    but did not answer in time is `timeout` (504: outcome unknown, like a wallet-rpc timeout)."""
    assert status_and_code(OwnerDidNotAnswer("x")) == (503, "unavailable")
    assert status_and_code(ForwardOutcomeUnknown("x")) == (504, "timeout")
