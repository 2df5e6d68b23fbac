"""Where a request is answered: the routes' hand-off to `Forwarding`, one host, a cluster host;
and what a forwarded request and its answer become on the way (walletd.api.forward).

The cluster's transport is a fake here (who holds which escrow, and a record of what was
forwarded): the forwarding through PostgreSQL itself is tested in test_cluster_forwarding.py,
and two real hosts in test_cluster_hosts.py and test_cluster_failover.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio

from tests.fakes import fake_app
from walletd.api.errors import status_and_code
from walletd.api.forward import AnswerHere, ClusterForwarding, Here
from walletd.api.forward.incoming import reply_from_response, request_from_call
from walletd.api.forward.outgoing import CLAIM_WAIT, call_from_request, response_from_reply
from walletd.api.messages import TCP_PEER, PeerCred, Request, Response
from walletd.api.routes import Api
from walletd.cluster.forwarding import (
    ForwardedCall,
    ForwardedReply,
    OwnerCheck,
)
from walletd.cluster.hosts import LeaseOwner
from walletd.errors import ForwardOutcomeUnknown, OwnedElsewhere, OwnerDidNotAnswer
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

OWNER_ANSWER = Response.json(200, {"answered_by": "b"})
HERE_ANSWER = Response.json(200, {"answered_by": "here"})


def request(path: str = "/v1/escrows/e1/balance", method: str = "GET") -> Request:
    target, _, query = path.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    return Request(
        method=method, path=target, query=params, headers={}, body=b"", peer=PeerCred(1, 2, 3)
    )


@attrs.define
class Forwarded:
    to_host: str
    call: ForwardedCall
    claim_timeout: float


@attrs.define
class FakeCluster:
    """The cluster as `ClusterForwarding` sees it: `holders` maps an escrow to the live host
    holding its lease (this host is "a"); `forward` answers as the owner would."""

    holders: dict[str, str] = attrs.Factory(dict)
    host_id: str = "a"
    lease_ttl: float = 10.0
    forwarded: list[Forwarded] = attrs.Factory(list)
    lookups: int = 0

    @property
    def ownership(self) -> FakeCluster:
        return self

    async def owner_elsewhere(self, escrow_id: str) -> str | None:
        await trio.lowlevel.checkpoint()
        self.lookups += 1
        owner = self.holders.get(escrow_id)
        return owner if owner != self.host_id else None

    async def lease_owner(self, escrow_id: str) -> LeaseOwner | None:
        await trio.lowlevel.checkpoint()
        self.lookups += 1
        owner = self.holders.get(escrow_id)
        if owner is None:
            return None
        ends = datetime.now(UTC) + timedelta(seconds=self.lease_ttl)
        return LeaseOwner(owner, ends, self.lease_ttl, live=True)

    async def forward(
        self,
        to_host: str,
        call: ForwardedCall,
        *,
        timeout: float,
        claim_timeout: float,
        owner_gone: OwnerCheck | None = None,
    ) -> ForwardedReply:
        await trio.lowlevel.checkpoint()
        self.forwarded.append(Forwarded(to_host, call, claim_timeout))
        return ForwardedReply(OWNER_ANSWER.status, OWNER_ANSWER.body)


class Handler:
    """A route's handler run here: counts its runs; raises `fail` (once) if given."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.runs = 0
        self.fail = fail

    async def __call__(self) -> Response:
        await trio.lowlevel.checkpoint()
        self.runs += 1
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        return HERE_ANSWER


def cluster_forwarding(cluster: FakeCluster, *, open_here: bool = False) -> ClusterForwarding:
    return ClusterForwarding(cluster, open_here=lambda _: open_here, timeout=30.0)


async def test_a_single_host_answers_every_request_here() -> None:
    """One host holds every escrow: whatever the route, the request runs here."""
    here = Handler()
    for needs_owner in (True, False):
        answer = await AnswerHere().answer(request(), "e1", here, needs_owner=needs_owner)
        assert answer == HERE_ANSWER
    assert here.runs == 2


async def test_a_request_for_an_escrow_open_here_is_answered_here_without_a_lookup() -> None:
    """The escrow's session is open on this host: answered here, no database read (the hot
    path of every balance read on the owner)."""
    cluster = FakeCluster({"e1": "b"})
    here = Handler()
    answer = await cluster_forwarding(cluster, open_here=True).answer(
        request(), "e1", here, needs_owner=True
    )
    assert answer == HERE_ANSWER
    assert (here.runs, cluster.lookups, cluster.forwarded) == (1, 0, [])


async def test_a_request_for_an_escrow_held_by_another_live_host_is_answered_there() -> None:
    """Another live host holds the escrow: the request is forwarded to it, whole, with the
    escrow its route matched, and answered as that host answered; nothing runs here."""
    cluster = FakeCluster({"e1": "b"})
    here = Handler()
    asked = request("/v1/escrows/e1/balance?refresh=true")
    answer = await cluster_forwarding(cluster).answer(asked, "e1", here, needs_owner=True)
    assert (answer.status, json.loads(answer.body)) == (200, {"answered_by": "b"})
    assert here.runs == 0
    [sent] = cluster.forwarded
    assert sent.to_host == "b"
    assert (sent.call.method, sent.call.segments, dict(sent.call.query), sent.call.escrow_id) == (
        "GET",
        ("v1", "escrows", "e1", "balance"),
        {"refresh": "true"},
        "e1",
    )


async def test_a_request_that_needs_no_session_is_answered_here() -> None:
    """A route that reads the shared store (an escrow's record, the list, stats) is answered
    by whichever host is asked, even for an escrow another host holds."""
    cluster = FakeCluster({"e1": "b"})
    here = Handler()
    answer = await cluster_forwarding(cluster).answer(
        request("/v1/escrows/e1"), "e1", here, needs_owner=False
    )
    assert answer == HERE_ANSWER
    assert (here.runs, cluster.lookups, cluster.forwarded) == (1, 0, [])


async def test_a_free_escrow_is_answered_here() -> None:
    """No host holds the escrow: this host serves it (and so takes it)."""
    cluster = FakeCluster()
    here = Handler()
    answer = await cluster_forwarding(cluster).answer(request(), "e1", here, needs_owner=True)
    assert answer == HERE_ANSWER
    assert (here.runs, cluster.forwarded) == (1, [])


async def test_an_escrow_taken_by_another_host_meanwhile_is_answered_there() -> None:
    """The escrow looked free, but another host took it before this one could (`OwnedElsewhere`
    from the handler): the request is forwarded to that host instead of failing."""
    cluster = FakeCluster()
    here = Handler(fail=OwnedElsewhere("escrow e1 is served by host b", "b"))

    async def taken() -> Response:
        cluster.holders["e1"] = "b"  # b took it while this host was opening it
        return await here()

    answer = await cluster_forwarding(cluster).answer(request(), "e1", taken, needs_owner=True)
    assert answer.status == 200
    assert json.loads(answer.body) == {"answered_by": "b"}
    assert [f.to_host for f in cluster.forwarded] == ["b"]
    assert here.runs == 1


async def test_a_creation_under_way_on_another_host_is_forwarded_there() -> None:
    """A creation (no escrow in its route) that another host has under way is forwarded to
    that host as it is: no lease to follow, claimed within the live-owner bound or not run."""
    cluster = FakeCluster()
    here = Handler(fail=OwnedElsewhere("escrow e9 is being created by host b", "b"))
    answer = await cluster_forwarding(cluster).answer(
        request("/v1/escrows", method="POST"), None, here, needs_owner=False
    )
    assert json.loads(answer.body) == {"answered_by": "b"}
    [sent] = cluster.forwarded
    assert (sent.to_host, sent.call.escrow_id, sent.claim_timeout) == ("b", None, CLAIM_WAIT)


async def test_owned_elsewhere_without_a_host_is_not_forwarded() -> None:
    """`OwnedElsewhere` that names no host has nowhere to go: it is the answer (503, retry)."""
    cluster = FakeCluster()
    here = Handler(fail=OwnedElsewhere("escrow e1 is held elsewhere"))
    with pytest.raises(OwnedElsewhere):
        await cluster_forwarding(cluster).answer(request(), "e1", here, needs_owner=True)
    assert cluster.forwarded == []


async def test_a_request_forwarded_here_is_answered_here_and_never_forwarded_again() -> None:
    """A call another host forwarded here runs through this host's API and is answered here,
    even if the escrow has moved on meanwhile: it is never forwarded a second time (no chase
    from host to host; the origin's client retries a 503)."""
    cluster = FakeCluster({"e1": "c"})  # moved on to c since the origin looked
    forwarding = cluster_forwarding(cluster)
    here = Handler()
    seen: list[Request] = []

    async def api(asked: Request) -> Response:
        seen.append(asked)
        return await forwarding.answer(asked, "e1", here, needs_owner=True)

    call = ForwardedCall(
        method="POST",
        path="/v1/escrows/e1/release",
        segments=("v1", "escrows", "e1", "release"),
        query={},
        body=b'{"address":"x"}',
        escrow_id="e1",
    )
    reply = await forwarding.incoming(api)(call)
    assert (reply.status, reply.body) == (HERE_ANSWER.status, HERE_ANSWER.body)
    assert here.runs == 1
    assert cluster.forwarded == []
    [asked] = seen
    assert (asked.method, asked.segments, asked.body) == (
        "POST",
        ("v1", "escrows", "e1", "release"),
        b'{"address":"x"}',
    )


@attrs.define
class Asked:
    escrow_id: str | None
    needs_owner: bool


@attrs.define
class SpyForwarding:
    """Records what each route hands over, and answers here."""

    asked: list[Asked] = attrs.Factory(list)

    async def answer(
        self, request: Request, escrow_id: str | None, here: Here, *, needs_owner: bool
    ) -> Response:
        self.asked.append(Asked(escrow_id, needs_owner))
        return await here()


async def test_routes_hand_over_the_escrow_their_match_names(tmp_path: Path) -> None:
    """Each route gives the forwarding the escrow id its `{id}` matched (None without one) and
    whether its handler needs the escrow's session; a request no route takes (404, 405, a bad
    id) is answered without it."""
    world = FakeWalletWorld()
    app = fake_app(tmp_path, world, FakePool(world))
    spy = SpyForwarding()
    api = Api(
        escrows=app.escrows,
        lifecycle=app.lifecycle,
        registry=app.registry,
        events=app.events,
        status=app.status,
        metrics=app.metrics,
        forwarding=spy,
    )
    expected = {
        ("GET", "/v1/escrows/e1/balance"): Asked("e1", True),
        ("POST", "/v1/escrows/e-2/release"): Asked("e-2", True),
        ("GET", "/v1/escrows/e1/payout/proof"): Asked("e1", True),
        ("DELETE", "/v1/escrows/e1/session"): Asked("e1", True),
        ("GET", "/v1/escrows/e1"): Asked("e1", False),
        ("GET", "/v1/escrows"): Asked(None, False),
        ("POST", "/v1/escrows"): Asked(None, False),
        ("GET", "/v1/stats"): Asked(None, False),
    }
    for (method, path), asked in expected.items():
        spy.asked.clear()
        await api(request(path, method))
        assert spy.asked == [asked], (method, path)
    for method, path in (
        ("GET", "/v1/nowhere"),
        ("PUT", "/v1/escrows/e1"),
        ("GET", "/v1/escrows/-x"),
    ):
        spy.asked.clear()
        answer = await api(request(path, method))
        assert answer.status in (400, 404, 405)
        assert spy.asked == [], (method, path)


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
