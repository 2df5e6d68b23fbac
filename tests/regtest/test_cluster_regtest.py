"""Several walletd hosts on one PostgreSQL and one regtest monerod (issue 14), seen from the API.

Three walletd processes h1, h2, h3 (each its own state dir, wallet dir, socket and log; no shared
disk) with `[cluster]` on one fresh database and a short `lease_ttl`. The marketplace may talk to
any of them: escrows created on one host are served by the others without moving the session;
a host killed with -9 under a stream of calls has its escrows served again by the others within
lease_ttl + one open, no call lost and every payout once; a host stopped gracefully (SIGTERM)
hands its escrows over as soon as they are stored, no caller seeing its "shutting down"; a host
paused (SIGSTOP) past its lease and resumed changes nothing and its wallet-rpc children are gone;
a host whose disk is wiped gets its escrow's wallets back from the database and the escrow pays
out.

Failover figures are printed (run with `-s`): they go into the bench's cluster row and the
closing note. Times are measured and reported; the only time bounds asserted are against a hang
(HANG) or derived from lease_ttl and an open measured in the same run, with room for a loaded
2-core machine (`_failover_bound`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.pgtest import fresh_database, url_of
from tests.regtest.cluster_hosts import (
    Cluster,
    ClusterHost,
    cluster_on,
    metric_value,
    wallets_held,
)
from tests.regtest.crash_helpers import all_events, new_payee_address, received_by
from tests.regtest.harness import (
    AMOUNT,
    HANG,
    create_escrow,
    create_escrows,
    fund_until_ready,
    mine,
    wait_state,
)
from walletd.ids import ROLES
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import Miner
from walletd.wallets.rpc import WalletRpc

pytestmark = [pytest.mark.regtest, pytest.mark.pg]

LEASE_TTL = 5.0  # seconds; the config's minimum is 3
LOAD_ROOM = 4.0  # a loaded 2-core machine: opens and renewals several times slower than idle
FENCED = "walletd_cluster_fenced_writes_total"
FORWARDED = "walletd_cluster_forwarded_requests_total"


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path, monerod: MonerodProcess) -> Iterator[Cluster]:
    """h1, h2, h3 on one fresh database (not started); afterwards every host is stopped and no
    wallet-rpc of any host outlived its walletd."""
    with (
        fresh_database() as conninfo,
        cluster_on(
            tmp_path, monerod.daemon_address, url_of(conninfo), hosts=3, lease_ttl=LEASE_TTL
        ) as hosts,
    ):
        yield hosts


# ---- helpers -------------------------------------------------------------------------------------


async def _until_ok(
    client: httpx.AsyncClient, method: str, url: str, *, ok: int = 200, **kwargs: Any
) -> tuple[httpx.Response, int]:
    """Send until the answer is `ok`, retrying a 503 (what a marketplace does); any other answer
    fails the test. Returns the answer and how many 503s came before it."""
    retries = 0
    with trio.fail_after(HANG):
        while True:
            r = await client.request(method, url, **kwargs)
            if r.status_code == ok:
                return r, retries
            assert r.status_code == 503, f"{method} {url}: {r.status_code} {r.text}"
            retries += 1
            await trio.sleep(0.5)


async def _cluster_view(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/v1/cluster")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _lease_holder(client: httpx.AsyncClient, escrow_id: str) -> dict[str, Any] | None:
    leases = [x for x in (await _cluster_view(client))["leases"] if x["escrow_id"] == escrow_id]
    assert len(leases) <= 1, leases
    return leases[0] if leases else None


async def _holder_id(client: httpx.AsyncClient, escrow_id: str) -> str | None:
    """The host holding the escrow's lease, as /v1/cluster says (None: no lease)."""
    lease = await _lease_holder(client, escrow_id)
    return None if lease is None else str(lease["host_id"])


async def _session_ids(client: httpx.AsyncClient) -> set[str]:
    r = await client.get("/v1/sessions")
    assert r.status_code == 200, r.text
    return {s["escrow_id"] for s in r.json()["sessions"]}


def _key(events: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    return [(e["seq"], e["type"], e["escrow_id"]) for e in events]


def _strictly_increasing(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs


async def _payouts_once(
    payee: WalletRpc, client: httpx.AsyncClient, paid: dict[str, int]
) -> dict[str, str]:
    """Every payout subaddress received exactly one transaction of AMOUNT less the recorded
    fee, the feed announced each payout once, and each escrow names that one txid. Returns
    the txids."""
    events = await all_events(client)
    submitted = [e for e in events if e["type"] == "payout_submitted"]
    count = Counter(e["escrow_id"] for e in submitted)
    fees = {e["escrow_id"]: e["fee"] for e in submitted}
    got = await received_by(payee, list(paid.values()))
    txids: dict[str, str] = {}
    for escrow_id, index in paid.items():
        assert count[escrow_id] == 1, f"{escrow_id}: {count[escrow_id]} payout_submitted events"
        assert len(got[index]) == 1, f"{escrow_id}: the payee received {got[index]}"
        assert got[index][0] == AMOUNT - fees[escrow_id], (escrow_id, got[index], fees)
        r = await client.get(f"/v1/escrows/{escrow_id}")
        txids[escrow_id] = r.json()["payout"]["txid"]
    assert len(set(txids.values())) == len(txids), txids
    return txids


async def _until(condition: Callable[[], bool], timeout: float = HANG) -> float:
    """Poll `condition` until it holds (TooSlowError after `timeout`); returns the seconds."""
    started = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            if condition():
                return trio.current_time() - started
            await trio.sleep(0.05)


async def _until_async(condition: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """`_until` for a condition that must be awaited."""
    started = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            if await condition():
                return trio.current_time() - started
            await trio.sleep(0.5)


async def _roles_stored(cluster: Cluster, escrow_id: str) -> bool:
    """Whether the database holds a version of each of the escrow's three wallets stored
    since the escrow became ready (walletd stores the wallets when their funding changes)."""
    rows = await cluster.query(
        "SELECT DISTINCT role FROM wallet_files WHERE escrow_id = %s AND stored_at >="
        " (SELECT max(at) FROM events WHERE escrow_id = %s AND type = 'ready')",
        (escrow_id, escrow_id),
    )
    return {row[0] for row in rows} == set(ROLES)


async def _gone(pids: list[int], timeout: float) -> float:
    """Wait until none of `pids` is a live process (zombies count as gone); returns seconds."""
    return await _until(lambda: not any(_live(pid) for pid in pids), timeout)


# How long a child that stopped serving may take to finish its exit before it is treated as
# hung there (see `_children_stopped`).
EXIT_GRACE = 30.0


async def _children_stopped(pids: list[int]) -> tuple[float, int]:
    """After a kill -9 of their walletd: wait until none of its wallet-rpc children `pids`
    serves any more (a bound only against a hang), then give each `EXIT_GRACE` to exit; SIGKILL
    any still there, as systemd does with what is left in the unit's control group and
    walletd's orphan clean-up does at the next start. Returns (seconds until none served, how
    many had to be killed).

    Why a child may not exit by itself: the parent-death signal (SIGTERM) makes wallet-rpc stop
    its RPC server, store its wallet and exit; but Linux sends it again for each of walletd's
    threads that exits after the one that forked the child, and one landing in wallet-rpc
    0.18's own exit (after "Successfully saved") was seen to leave that process hung for good
    (its signal handler throws boost::lock_error from a destroyed mutex). It serves nobody and
    its wallet is stored by then."""
    stopped = await _until(lambda: not any(_listening(pid) for pid in pids), HANG)
    try:
        await _gone(pids, EXIT_GRACE)
        return stopped, 0
    except trio.TooSlowError:
        left = [pid for pid in pids if _live(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await _gone(left, HANG)
        return stopped, len(left)


def _listening(pid: int) -> bool:
    """Whether process `pid` holds a listening TCP socket (IPv4 or IPv6)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # gone
    owned = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                owned.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in owned:  # LISTEN
                    return True
    return False


def _live(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _log_lines(text: str, *needles: str) -> list[str]:
    """Lines of a walletd log containing every needle (case-insensitive)."""
    return [x for x in text.splitlines() if all(n.lower() in x.lower() for n in needles)]


def _refusals(text: str) -> list[str]:
    """Log lines about a write refused by fencing (walletd.errors.Fenced's messages:
    "lease lost (epoch N stale)", "no lease held by this host"; or a line naming it fenced)."""
    marks = ("stale)", "no lease held", "fenced write", "write fenced", "write refused")
    return [x for x in text.splitlines() if any(m in x.lower() for m in marks)]


def _at_most_one_host(hosts: list[ClusterHost], escrow_ids: list[str]) -> None:
    """No escrow's wallets are held open on two hosts at once."""
    for escrow_id in escrow_ids:
        holders = [h.host_id for h in hosts if wallets_held(h.wallet_dir, escrow_id)]
        assert len(holders) <= 1, f"{escrow_id}: wallets open on {holders}"


@attrs.define
class ReadStream:
    """A client reading one escrow's balance in a loop through one host, recording each call:
    (sent, answered, status). A 503 is retried (counted); any other failure is a lost call."""

    client: httpx.AsyncClient
    escrow_id: str
    calls: list[tuple[float, float, int]] = attrs.Factory(list)
    lost: list[str] = attrs.Factory(list)
    refusals: list[str] = attrs.Factory(list)  # the 503s' bodies

    async def run(self) -> None:
        while True:
            sent = trio.current_time()
            try:
                r = await self.client.get(f"/v1/escrows/{self.escrow_id}/balance")
            except httpx.TransportError as exc:
                self.lost.append(f"{self.escrow_id}: no answer ({exc!r})")
                await trio.sleep(0.2)
                continue
            self.calls.append((sent, trio.current_time(), r.status_code))
            if r.status_code == 200:
                assert r.json()["unlocked_balance"] == AMOUNT, r.text
            elif r.status_code == 503:
                self.refusals.append(r.text[:300])
            else:
                self.lost.append(f"{self.escrow_id}: {r.status_code} {r.text[:300]}")
            await trio.sleep(0.1)

    def served_after(self, moment: float) -> float | None:
        """When the first call sent after `moment` was answered 200."""
        done = [end for sent, end, status in self.calls if sent > moment and status == 200]
        return min(done) if done else None

    @property
    def retried(self) -> int:
        return sum(status == 503 for _, _, status in self.calls)


@attrs.define
class TakeOver:
    """When every escrow of `ids` was first seen leased by a host other than `old` (polled in
    the database): the failover's lease part, apart from the opens after it."""

    cluster: Cluster
    ids: list[str]
    old: str
    at: float | None = None

    async def run(self) -> None:
        while self.at is None:
            rows = await self.cluster.query(
                "SELECT count(*) FROM leases WHERE escrow_id = ANY(%s) AND host_id IS NOT NULL"
                " AND host_id <> %s AND expires_at > cluster_now()",
                (self.ids, self.old),
            )
            if rows[0][0] == len(self.ids):
                self.at = trio.current_time()
            await trio.sleep(0.05)

    def after(self, moment: float) -> str:
        return "?" if self.at is None else f"{self.at - moment:.1f} s"


def _failover_bound(one_open: float, opens: int) -> float:
    """What a failover may take before the test calls it a failure rather than a slow machine:
    the documented bound (lease_ttl, then the escrows' opens, `one_open` measured in this run)
    with LOAD_ROOM for a loaded 2-core machine, and 30 s for the scheduler. The figure itself is
    printed; the README's bound is lease_ttl + one open."""
    return LOAD_ROOM * (LEASE_TTL + opens * one_open) + 30.0


async def _until_served(streams: list[ReadStream], moment: float) -> dict[str, float]:
    """Wait until every stream had a call sent after `moment` answered 200; returns, per
    escrow, the seconds from `moment` to that answer."""
    with trio.fail_after(HANG):
        while True:
            served = {s.escrow_id: s.served_after(moment) for s in streams}
            if all(t is not None for t in served.values()):
                return {k: t - moment for k, t in served.items() if t is not None}
            await trio.sleep(0.05)


# ---- 1: any host answers -------------------------------------------------------------------------


async def test_escrow_created_on_one_host_is_served_by_the_others(
    cluster: Cluster, monerod: MonerodProcess, miner: Miner
) -> None:
    """An escrow created on h1 is answered by h2 and h3 with the same escrow, balance and
    transfer as h1 gives, while its session stays on h1 (no session for it on h2 or h3, and
    /v1/cluster lists its lease on h1). The event feed is one: every host shows the same
    events with strictly increasing seq, and a long poll on h3 wakes within ~a second of an
    event written by h1."""
    await cluster.start()
    async with (
        cluster["h1"].client() as h1,
        cluster["h2"].client() as h2,
        cluster["h3"].client() as h3,
    ):
        escrow = await create_escrow(h1, "any-1")
        txid = await fund_until_ready(h1, monerod, miner, {"any-1": escrow})
        # The session is open on h1, its wallets scanned up to the tip: nothing changes below.
        tip = await trio.to_thread.run_sync(monerod.height)
        r = await h1.get("/v1/escrows/any-1/balance", params={"refresh": True})
        assert r.status_code == 200, r.text
        assert r.json()["height"] == tip, (r.text, tip)

        urls = [
            "/v1/escrows/any-1",
            "/v1/escrows/any-1/balance",
            f"/v1/escrows/any-1/transfers/{txid}",
        ]
        answers: dict[str, list[dict[str, Any]]] = {}
        for url in urls:
            for name, client in (("h1", h1), ("h2", h2), ("h3", h3)):
                r = await client.get(url)
                assert r.status_code == 200, f"{name} {url}: {r.status_code} {r.text}"
                body = r.json()
                body.pop("session", None)  # where the session is open: per host, by design
                body.pop("updated_at", None)  # the monitor on h1 may touch it meanwhile
                body.get("funding", {}).pop("checked_at", None)
                answers.setdefault(url, []).append(body)
        for url, bodies in answers.items():
            assert bodies[1] == bodies[0], (url, bodies)
            assert bodies[2] == bodies[0], (url, bodies)
        assert answers[urls[1]][0]["unlocked_balance"] == AMOUNT
        assert answers[urls[2]][0]["amount"] == AMOUNT

        assert "any-1" in await _session_ids(h1)
        assert "any-1" not in await _session_ids(h2), "the session moved to h2"
        assert "any-1" not in await _session_ids(h3), "the session moved to h3"
        for client in (h1, h2, h3):
            view = await _cluster_view(client)
            assert {h["host_id"] for h in view["hosts"]} == {"h1", "h2", "h3"}, view
            assert await _holder_id(client, "any-1") == "h1", view

        # One ordered feed: h3 and h2 show h1's events, in the same order, seq increasing.
        feed3 = await all_events(h3)
        feed2 = await all_events(h2)
        feed1 = await all_events(h1)
        for name, feed in (("h1", feed1), ("h2", feed2), ("h3", feed3)):
            assert feed, f"GET /v1/events?after=0 on {name} answered no events"
            _strictly_increasing(feed)
        assert _key(feed1)[: len(feed3)] == _key(feed3)
        assert _key(feed1)[: len(feed2)] == _key(feed2)
        mine = [e["type"] for e in feed3 if e["escrow_id"] == "any-1"]
        for wanted in ("escrow_created", "funded", "ready"):
            assert wanted in mine, mine

        # A long poll on h3 wakes on an event h1 writes (h1 closes the session).
        after = feed3[-1]["seq"]
        woke: dict[str, float] = {}

        async def long_poll() -> None:
            cursor = after
            while True:
                r = await h3.get("/v1/events", params={"after": cursor, "timeout": 30})
                assert r.status_code == 200, r.text
                body = r.json()
                for event in body["events"]:
                    if (event["type"], event["escrow_id"]) == ("session_closed", "any-1"):
                        woke["at"] = trio.current_time()
                        return
                cursor = body["next"]

        with trio.fail_after(HANG):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_poll)
                await trio.sleep(1.0)  # the poll is waiting on h3
                r = await h1.delete("/v1/escrows/any-1/session")
                answered = trio.current_time()
                assert r.status_code == 200, r.text
                assert r.json()["closed"] is True, r.text
        wake = woke["at"] - answered
        print(f"\ncluster: long poll on h3 woke {wake:+.2f} s after h1 answered the close")
        # Woken by the event, not by the poll's own 30 s end (which answers no event).
        assert wake < 15.0, f"the long poll on h3 woke {wake:.2f} s after h1's event"
        later = await all_events(h3)
        _strictly_increasing(later)
        assert _key(later)[: len(feed3)] == _key(feed3)


# ---- 2: kill -9 of a host ------------------------------------------------------------------------


async def test_kill9_of_a_host_under_a_stream_of_calls_and_payouts(
    cluster: Cluster, monerod: MonerodProcess, miner: Miner, payee: WalletRpc
) -> None:
    """Three ready escrows open on h1, their balances read in a loop through h2; h1 is killed
    with -9 (its wallet-rpc children die with it). Every escrow is answered again through h2
    within lease_ttl + one open (figure printed), every call is eventually answered 200 (503s
    retried, counted), /v1/cluster shows the leases on h2/h3, and a release of each through h3
    lands exactly once on chain."""
    ids = ["kill-1", "kill-2", "kill-3"]
    h1 = cluster["h1"]
    await cluster.start()
    async with h1.client() as c1, cluster["h2"].client() as c2, cluster["h3"].client() as c3:
        escrows = await create_escrows(c1, ids)
        await fund_until_ready(c1, monerod, miner, escrows)
        for escrow_id in ids:  # every session open on h1
            r = await c1.get(f"/v1/escrows/{escrow_id}/balance")
            assert r.status_code == 200, r.text
        assert set(ids) <= await _session_ids(c1)
        for escrow_id in ids:
            assert await _holder_id(c3, escrow_id) == "h1"
        # Time one open on this machine now, for the bound below (a session on h3 of its own).
        opened = await c3.post("/v1/escrows", json={"escrow_id": "kill-probe", "amount": AMOUNT})
        assert opened.status_code == 201, opened.text
        r = await c3.delete("/v1/escrows/kill-probe/session")
        assert r.status_code == 200, r.text
        r = await c3.post("/v1/escrows/kill-probe/session")
        assert r.status_code == 200, r.text
        one_open = float(r.json()["open_s"])

        streams = [ReadStream(c2, escrow_id) for escrow_id in ids]
        children = h1.proc.children() if h1.proc else []
        assert children, "h1 runs no wallet-rpc"
        taken = TakeOver(cluster, ids, "h1")
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(stream.run)
            await _until(lambda: all(s.served_after(0.0) is not None for s in streams))
            await trio.sleep(1.0)
            killed_at = trio.current_time()
            nursery.start_soon(taken.run)
            await h1.kill9()
            # Children die with it (PDEATHSIG: SIGTERM, they stop serving, store and exit);
            # one busy in a long call takes longer on a loaded machine.
            orphans, hung = await _children_stopped(children)
            served = await _until_served(streams, killed_at)
            await trio.sleep(2.0)  # the streams keep answering from the new owners
            nursery.cancel_scope.cancel()

        worst = max(served.values())
        calls = sum(len(s.calls) for s in streams)
        retried = sum(s.retried for s in streams)
        print(
            f"\ncluster failover (kill -9 of the owner, lease_ttl {LEASE_TTL:g} s, one open"
            f" {one_open:.1f} s): every escrow served again after {worst:.1f} s"
            f" (each: {', '.join(f'{k} {v:.1f} s' for k, v in sorted(served.items()))});"
            f" every lease taken over after {taken.after(killed_at)};"
            f" wallet-rpc children stopped serving {orphans:.2f} s after the kill"
            f" ({hung} hung in their exit, killed);"
            f" calls {calls}, 503s retried {retried}, lost {sum(len(s.lost) for s in streams)}"
        )
        assert [x for s in streams for x in s.lost] == []
        for stream in streams:
            last = stream.calls[-1]
            assert last[2] == 200, f"{stream.escrow_id}: the stream ended on {last}"
        for escrow_id in ids:
            assert await _holder_id(c3, escrow_id) in ("h2", "h3")
        _at_most_one_host(list(cluster.hosts.values()), ids)

        paid: dict[str, int] = {}
        releases = 0
        for escrow_id in ids:
            address, index = await new_payee_address(payee, escrow_id)
            r, retries = await _until_ok(
                c3, "POST", f"/v1/escrows/{escrow_id}/release", ok=202, json={"address": address}
            )
            releases += retries
            assert r.json()["state"] == "releasing", r.text
            paid[escrow_id] = index
        await mine(monerod, miner, 10)
        for escrow_id in ids:
            await wait_state(c2, escrow_id, "completed")
        txids = await _payouts_once(payee, c3, paid)
        print(f"cluster: releases through h3 after the kill: 503s retried {releases}; {txids}")
    documented = LEASE_TTL + one_open
    if worst > documented:  # reported: a figure on a shared 2-core machine
        print(f"cluster: failover {worst:.1f} s exceeded lease_ttl + one open = {documented:.1f} s")
    bound = _failover_bound(one_open, len(ids))
    assert worst < bound, f"failover took {worst:.1f} s, more than even a loaded {bound:.0f} s"


# ---- 3: SIGSTOP past the lease, then SIGCONT -----------------------------------------------------


async def test_paused_owner_resumed_changes_nothing(
    cluster: Cluster, monerod: MonerodProcess, miner: Miner, payee: WalletRpc
) -> None:
    """h1 holds a ready escrow and is paused (SIGSTOP) past its lease: reads through h2 are
    served again once another host took the escrow (figure printed). Resumed (SIGCONT), h1
    changes nothing: its wallet-rpc processes for the escrow are gone, it logs the lost lease,
    any write it tries is refused (counted in walletd_cluster_fenced_writes_total and logged),
    the escrow's state and events are unchanged by it, and a release sent to h1 is carried out
    by the new owner and pays exactly once."""
    h1 = cluster["h1"]
    await cluster.start()
    async with h1.client() as c1, cluster["h2"].client() as c2, cluster["h3"].client() as c3:
        escrow = await create_escrow(c1, "stop-1")
        await fund_until_ready(c1, monerod, miner, {"stop-1": escrow})
        r = await c1.get("/v1/escrows/stop-1/balance")
        assert r.status_code == 200, r.text
        before = await _lease_holder(c2, "stop-1")
        assert before is not None
        assert before["host_id"] == "h1", before
        held = wallets_held(h1.wallet_dir, "stop-1")
        assert len(held) == len(ROLES), held
        holders = sorted({pid for pids in held.values() for pid in pids})
        metrics = await h1.metrics()
        fenced_before = metric_value(metrics, FENCED)
        forwarded_before = metric_value(metrics, FORWARDED, 'direction="sent"')

        stream = ReadStream(c2, "stop-1")
        take_over = TakeOver(cluster, ["stop-1"], "h1")
        paused_at = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.run)
                await _until(lambda: stream.served_after(0.0) is not None)
                paused_at = trio.current_time()
                nursery.start_soon(take_over.run)
                h1.pause()
                served = await _until_served([stream], paused_at)
                await trio.sleep_until(max(trio.current_time(), paused_at + 2 * LEASE_TTL))
                nursery.cancel_scope.cancel()
            # Still paused: another host holds the escrow now, under a new epoch.
            after_takeover = await _lease_holder(c2, "stop-1")
            assert after_takeover is not None, "no host holds the escrow"
            assert after_takeover["host_id"] in ("h2", "h3"), after_takeover
            assert after_takeover["epoch"] > before["epoch"], (before, after_takeover)
            await trio.sleep(1.0)  # the new owner's session announcements are written
            snapshot = await all_events(c2)
            state_before = (await c2.get("/v1/escrows/stop-1")).json()
        finally:
            log_offset = h1.log_size()
            resumed_at = trio.current_time()
            h1.resume()
        takeover = served["stop-1"]
        print(
            f"\ncluster failover (SIGSTOP of the owner, lease_ttl {LEASE_TTL:g} s): served again"
            f" through h2 after {takeover:.1f} s (lease taken over after"
            f" {take_over.after(paused_at)}), 503s retried {stream.retried},"
            f" lost {len(stream.lost)}"
        )
        assert stream.lost == []

        # Resumed: the escrow's wallet-rpc processes on h1 are gone, the lost lease logged.
        gone = await _gone(holders, HANG)
        await _until(lambda: not wallets_held(h1.wallet_dir, "stop-1"), HANG)
        await _until(
            lambda: bool(_log_lines(h1.log_since(log_offset), "lease lost", "stop-1")), HANG
        )
        await trio.sleep(3.0)  # whatever h1 does on waking up, it has done by now
        assert "stop-1" not in await _session_ids(c1)
        print(
            f"cluster: resumed h1 stopped its wallet-rpc for the escrow"
            f" {resumed_at - paused_at + gone:.1f} s after the pause, {gone:.2f} s after SIGCONT"
        )

        # Nothing h1 tried went through: the escrow's events and state are the new owner's.
        feed = await all_events(c3)
        _strictly_increasing(feed)
        assert _key(feed)[: len(snapshot)] == _key(snapshot)
        new = [e for e in feed[len(snapshot) :] if e["escrow_id"] == "stop-1"]
        assert new == [], f"events about the escrow after h1 resumed: {new}"
        last_seq = snapshot[-1]["seq"] if snapshot else 0
        by_h1 = await cluster.query(
            "SELECT seq, type FROM events WHERE seq > %s AND escrow_id = %s AND host_id = %s",
            (last_seq, "stop-1", "h1"),
        )
        assert by_h1 == [], f"events written by the resumed h1: {by_h1}"
        state_after = (await c2.get("/v1/escrows/stop-1")).json()
        assert (state_after["state"], state_after["payout"]) == ("ready", None), state_after
        assert state_after["multisig_address"] == state_before["multisig_address"]
        lease = await _lease_holder(c3, "stop-1")
        assert lease is not None
        taken = (after_takeover["host_id"], after_takeover["epoch"])
        assert (lease["host_id"], lease["epoch"]) == taken, "the lease changed hands again"

        # A release sent to h1 is carried out by the owner; h1 itself writes nothing.
        address, index = await new_payee_address(payee, "stop-1")
        r, retries = await _until_ok(
            c1, "POST", "/v1/escrows/stop-1/release", ok=202, json={"address": address}
        )
        assert r.json()["state"] == "releasing", r.text
        metrics = await h1.metrics()
        fenced = metric_value(metrics, FENCED) - fenced_before
        forwarded = metric_value(metrics, FORWARDED, 'direction="sent"') - forwarded_before
        fence_lines = _refusals(h1.log_since(log_offset))
        print(
            f"cluster: resumed h1: writes refused {fenced:g}, fenced log lines"
            f" {len(fence_lines)}, requests forwarded {forwarded:g}, release 503s {retries}"
        )
        assert forwarded >= 1, "h1 did not hand the release to the escrow's owner"
        if fenced:
            assert fence_lines, "h1's refused writes were counted but not logged"
        assert await _holder_id(c3, "stop-1") in ("h2", "h3")
        await mine(monerod, miner, 10)
        await wait_state(c3, "stop-1", "completed")
        await _payouts_once(payee, c3, {"stop-1": index})
        assert (
            await cluster.query(
                "SELECT seq FROM events WHERE seq > %s AND escrow_id = %s AND host_id = %s",
                (last_seq, "stop-1", "h1"),
            )
            == []
        )


# ---- 3b: a graceful stop (SIGTERM) of the owner --------------------------------------------------


async def test_graceful_stop_of_the_owner_hands_its_escrows_over(
    cluster: Cluster, monerod: MonerodProcess, miner: Miner
) -> None:
    """Two ready escrows open on h1, their balances read in a loop through h2; h1 gets SIGTERM.
    No caller of h2 gets h1's 503 "walletd is shutting down" (h1 stops claiming forwarded calls
    first), h1 exits 0, every read is answered 200 again (the time from the SIGTERM and from h1's
    exit printed: its leases are handed back before it exits, so h2 serves at once), no call is
    lost, h1 leaves the host list and the escrows' leases are on h2 or h3."""
    ids = ["term-1", "term-2"]
    h1 = cluster["h1"]
    await cluster.start()
    async with h1.client() as c1, cluster["h2"].client() as c2, cluster["h3"].client() as c3:
        escrows = await create_escrows(c1, ids)
        await fund_until_ready(c1, monerod, miner, escrows)
        for escrow_id in ids:
            r = await c1.get(f"/v1/escrows/{escrow_id}/balance")
            assert r.status_code == 200, r.text
            assert await _holder_id(c3, escrow_id) == "h1"
        streams = [ReadStream(c2, escrow_id) for escrow_id in ids]
        assert h1.proc is not None
        taken = TakeOver(cluster, ids, "h1")
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(stream.run)
            await _until(lambda: all(s.served_after(0.0) is not None for s in streams))
            await trio.sleep(1.0)
            stopped_at = trio.current_time()
            nursery.start_soon(taken.run)
            h1.proc.signal(signal.SIGTERM)
            code = await trio.to_thread.run_sync(h1.proc.wait, HANG)
            exited = trio.current_time() - stopped_at
            served = await _until_served(streams, stopped_at)
            await trio.sleep(2.0)  # the streams keep answering from the new owner
            nursery.cancel_scope.cancel()
        assert code == 0, f"h1 exited {code}"
        worst = max(served.values())
        refusals = [x for s in streams for x in s.refusals]
        print(
            f"\ncluster failover (SIGTERM of the owner, lease_ttl {LEASE_TTL:g} s): h1 exited after"
            f" {exited:.1f} s; every escrow served again after {worst:.1f} s from the SIGTERM"
            f" (each: {', '.join(f'{k} {v:.1f} s' for k, v in sorted(served.items()))});"
            f" every lease taken over after {taken.after(stopped_at)};"
            f" calls {sum(len(s.calls) for s in streams)}, 503s {len(refusals)},"
            f" lost {sum(len(s.lost) for s in streams)}"
        )
        assert [x for s in streams for x in s.lost] == []
        assert [x for x in refusals if "shutting down" in x] == [], refusals
        for stream in streams:
            assert stream.calls[-1][2] == 200, f"{stream.escrow_id}: ended on {stream.calls[-1]}"
        view = await _cluster_view(c3)
        assert "h1" not in {h["host_id"] for h in view["hosts"]}, view
        for escrow_id in ids:
            assert await _holder_id(c3, escrow_id) in ("h2", "h3")


# ---- 4: a wiped disk -----------------------------------------------------------------------------


async def test_wiped_disk_wallets_restored_from_the_database(
    cluster: Cluster, monerod: MonerodProcess, miner: Miner, payee: WalletRpc
) -> None:
    """h1, the only host running, holds a ready escrow; it is killed with -9 and its whole
    wallet dir and state dir are deleted (only the provisioned vault key is put back). Started
    again, h1 restores the escrow's three wallets from the database: the escrow keeps its
    history and balance, and its release pays out exactly once."""
    h1 = cluster["h1"]
    await cluster.start("h1")
    async with h1.client() as c1:
        escrow = await create_escrow(c1, "wipe-1")
        await fund_until_ready(c1, monerod, miner, {"wipe-1": escrow})
        r = await c1.get("/v1/escrows/wipe-1/balance", params={"refresh": True})
        assert r.status_code == 200, r.text
        history = [e["type"] for e in await all_events(c1) if e["escrow_id"] == "wipe-1"]
        files = [f"escrow-wipe-1-{role}" for role in ROLES]
        assert all((h1.wallet_dir / f).exists() for f in files)
        stored = await _until_async(lambda: _roles_stored(cluster, "wipe-1"), HANG)
        print(f"\ncluster: the escrow's post-ready wallet files were saved {stored:.1f} s later")
    children = h1.proc.children() if h1.proc else []
    await h1.kill9()
    await _children_stopped(children)  # a busy child stores before it exits; wipe only after
    h1.wipe_disk()
    assert not h1.wallet_dir.exists()
    assert not h1.state_dir.exists()

    started = trio.current_time()
    await h1.start()
    async with h1.client() as c1:
        r, retries = await _until_ok(c1, "GET", "/v1/escrows/wipe-1/balance")
        print(
            f"\ncluster: wiped host served the escrow again {trio.current_time() - started:.1f} s"
            f" after its restart ({retries} 503s)"
        )
        assert r.json()["unlocked_balance"] == AMOUNT, r.text
        assert all((h1.wallet_dir / f).exists() for f in files), sorted(
            p.name for p in h1.wallet_dir.iterdir()
        )
        assert _log_lines(h1.new_log(), "wallet files restored", "wipe-1")
        after = [e["type"] for e in await all_events(c1) if e["escrow_id"] == "wipe-1"]
        assert after[: len(history)] == history
        assert (await c1.get("/v1/escrows/wipe-1")).json()["state"] == "ready"

        address, index = await new_payee_address(payee, "wipe-1")
        r, _ = await _until_ok(
            c1, "POST", "/v1/escrows/wipe-1/release", ok=202, json={"address": address}
        )
        await mine(monerod, miner, 10)
        await wait_state(c1, "wipe-1", "completed")
        await _payouts_once(payee, c1, {"wipe-1": index})
