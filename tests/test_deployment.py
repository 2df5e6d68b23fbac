"""The deployment: one host and a cluster behind one face, chosen once from `[cluster]`.

One host answers every request here, owns every escrow, runs a session as it is and reports
itself alone in `GET /v1/cluster`; a cluster host runs the look for what dead hosts left. None of
this needs a database. (Where a cluster host answers a request is `walletd.api.forward`'s,
tested with the API.)
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.fakes import fake_config
from walletd.api.messages import TCP_PEER, Request, Response
from walletd.config import ClusterConfig
from walletd.deployment.choose import deployment_for
from walletd.deployment.cluster import Cluster
from walletd.deployment.single_host import SingleHost
from walletd.jsontypes import JsonMapping
from walletd.state.events import EventLog
from walletd.state.ownership import LocalOwnership
from walletd.state.sqlite_store import LocalState, Store
from walletd.state.store import EventRecord


class _Wiring:
    def __init__(self, open_here: set[str] | None = None) -> None:
        self.open_here = open_here or set()
        self.served: list[Request] = []

    async def serve(self, request: Request) -> Response:
        self.served.append(request)
        return Response.json(200, {"served": "here"})

    def is_open(self, escrow_id: str) -> bool:
        return escrow_id in self.open_here

    def sessions_now(self) -> tuple[int, int]:
        return 2, 8

    def events_written(self) -> None:
        return None


def _request(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Request:
    return Request(method, path, {}, headers or {}, b"", TCP_PEER)


async def _here() -> Response:
    return Response.json(200, {"answered": "here"})


def test_without_cluster_section_it_is_one_host(tmp_path: Path) -> None:
    """No `[cluster]`: one host, on SQLite in the state directory; `[cluster]`: a cluster host
    named by its host_id (nothing is connected until it starts)."""
    config = fake_config(tmp_path)
    config.daemon.state_dir.mkdir(parents=True)
    single = deployment_for(config, _Wiring())
    assert isinstance(single, SingleHost)
    assert (config.daemon.state_dir / "walletd.sqlite3").exists()
    clustered = config.__class__(
        daemon=config.daemon, monero=config.monero, cluster=ClusterConfig(host_id="h1")
    )
    cluster = deployment_for(clustered, _Wiring())
    assert isinstance(cluster, Cluster)
    assert cluster.host_id == "h1"


async def test_one_host_answers_everything_here_and_lists_itself_alone(tmp_path: Path) -> None:
    """One host: every request is answered here, whatever it asks for; a session runs as it
    is, wallet files stay on the host, and /v1/cluster lists this host alone, live, with its
    sessions, and no leases."""
    single = SingleHost(tmp_path / "db", _Wiring())
    answer = await single.forwarding.answer(
        _request("/v1/escrows/e1/balance"), "e1", _here, needs_owner=True
    )
    assert answer.status == 200
    assert single.kept_versions is None
    assert single.on_stored is None
    assert single.services() == ()
    hosts, leases = await single.hosts_and_leases()
    assert [(h.host_id, h.sessions, h.capacity, h.live) for h in hosts] == [
        (single.host_id, 2, 8, True)
    ]
    assert leases == []


async def test_one_host_leaves_nothing_for_others_to_adopt() -> None:
    """One host: there is no other host whose payouts could be left half done, so the look for
    them never runs."""
    ran: list[bool] = []

    async def look() -> None:
        ran.append(True)

    with trio.fail_after(1):
        await LocalOwnership().adopt_orphans(look)
    assert ran == []


def _cluster(tmp_path: Path, wiring: _Wiring) -> Cluster:
    config = fake_config(tmp_path)
    return Cluster(
        ClusterConfig(host_id="a"), config.monero.wallet_dir, wiring, forward_timeout=5.0
    )


async def test_a_cluster_host_keeps_looking_for_what_dead_hosts_left(tmp_path: Path) -> None:
    """A cluster host runs the look for payouts dead hosts left for as long as it runs."""
    cluster = _cluster(tmp_path, _Wiring())
    looking = trio.Event()

    async def look() -> None:
        looking.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cluster.ownership.adopt_orphans, look)
        with trio.fail_after(1):
            await looking.wait()
        nursery.cancel_scope.cancel()


class _RemoteLike(LocalState):
    """The SQLite store answering like a remote one: nothing is written without waiting."""

    def append_event_nowait(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord:
        raise trio.WouldBlock


async def test_an_announcement_is_written_at_once_or_queued_as_the_store_allows(
    tmp_path: Path,
) -> None:
    """The embedded store writes an announcement at once, as it is made; a store that cannot
    write without waiting gets it queued, and the event writer writes it, in order."""
    inline = LocalState(Store(tmp_path / "inline.db"))
    EventLog(inline).emit_soon("daemon_switched", None, to="b")
    assert [e.type for e in await inline.events_after(0)] == ["daemon_switched"]

    remote = _RemoteLike(Store(tmp_path / "remote.db"))
    events = EventLog(remote)
    events.emit_soon("daemon_switched", None, to="b")
    events.emit_soon("daemon_switched", None, to="c")
    assert await remote.events_after(0) == []
    events.close_queue()
    with trio.fail_after(5):
        await events.run()
    assert [e.data["to"] for e in await remote.events_after(0)] == ["b", "c"]
