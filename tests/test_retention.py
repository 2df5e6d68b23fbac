"""Nothing grows without bound: old events are pruned, the monitor forgets finished escrows.

Sequence numbers keep growing through pruning and restarts, and a client whose cursor points
into the pruned range is told so.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.fakes import call, sqlite
from tests.harness import AMOUNT, app_on_fakes, run_monitor, wait_state
from walletd.state.events import PRUNE_INTERVAL, EventLog
from walletd.state.sqlite_store import LocalState, Store

OLD = "2000-01-01T00:00:00.000Z"


def _age_all(store: Store) -> None:
    store._db.execute("UPDATE events SET at = ?", (OLD,))


def test_sequence_keeps_growing_with_every_event_gone(tmp_path: Path) -> None:
    """With every event gone from the table (pruned, then a restart), the newest seq is still
    the last one handed out and the next event gets a higher one: seqs only grow."""
    store = Store(tmp_path / "db")
    for _ in range(5):
        last = store.append_event("funded", "e1", {})
    store._db.execute("DELETE FROM events")
    store.close()
    store = Store(tmp_path / "db")
    assert store.last_event_seq() == last.seq
    assert store.append_event("ready", "e1", {}).seq == last.seq + 1


async def test_old_events_are_pruned_but_never_the_newest(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Events older than the retention go, in the background; the newest event always stays
    (so the feed's position survives) and newer events are kept."""
    store = Store(tmp_path / "db")
    events = EventLog(LocalState(store))
    for _ in range(2500):  # more than one delete batch
        store.append_event("funded", "e1", {})
    _age_all(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.prune_forever, 30)
        await trio.sleep(PRUNE_INTERVAL + 1)
        kept = store.events_after(0)
        assert [e.seq for e in kept] == [2500]
        fresh = [store.append_event("ready", "e1", {}).seq for _ in range(2)]
        await trio.sleep(PRUNE_INTERVAL + 1)
        assert [e.seq for e in store.events_after(0)] == fresh  # 2500 is old and not the newest
        nursery.cancel_scope.cancel()


async def test_stale_cursor_gets_the_oldest_kept_and_is_told(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """GET /v1/events?after=N with N older than the oldest kept event answers the oldest kept
    events onward with "pruned": true; a cursor at or past the pruned range is not told."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await app_on_fakes(nursery, tmp_path)
        for _ in range(10):
            await app.events.emit("funded", "e1")
        _age_all(sqlite(app))
        await app.events.emit("ready", "e1")  # seq 11, recent
        await app.events.prune(30)
        status, body = await call(app, "GET", "/v1/events?after=3")
        assert status == 200, body
        assert ([e["seq"] for e in body["events"]], body["next"]) == ([11], 11)
        assert (body["pruned"], body["oldest_seq"]) == (True, 11)
        status, body = await call(app, "GET", "/v1/events?after=10")
        assert [e["seq"] for e in body["events"]] == [11]
        assert "pruned" not in body
        nursery.cancel_scope.cancel()


async def test_monitor_forgets_escrows_it_no_longer_watches(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The monitor's per-escrow bookkeeping is dropped once an escrow leaves the watched
    states (ready, paid out, or removed), so it does not grow with every escrow ever made."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "m1", "amount": AMOUNT})
        await call(app, "DELETE", "/v1/escrows/m1/session")  # watched cold, then warm
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "m1", "ready")
        await trio.sleep(30)  # a few cycles
        assert "m1" not in app.monitor._refreshed_at
        assert "m1" not in app.monitor._cold_checked
        nursery.cancel_scope.cancel()
