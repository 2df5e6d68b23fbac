"""The owner's side of forwarding: rows addressed to this host claimed, run and answered.

`ForwardServer` claims each row exactly once (woken by its channel, and scanning every few
seconds in case a notification was lost), erases the body as it claims it, runs the request
through the same handler as a local one, writes the reply into the row and notifies the origin's
reply channel. It also purges rows whose origin stopped waiting long ago (a crashed host's), and
on a graceful stop claims no more, letting the requests it has claimed finish.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs
import structlog
import trio
from psycopg.types.json import Jsonb

from walletd.cluster.db import Connection, Database
from walletd.cluster.forwarding.records import (
    ForwardedCall,
    ForwardedReply,
    ForwardHandler,
    ForwardingStatistics,
    forward_channel,
    reply_channel,
)
from walletd.cluster.notifications import Listener, notify
from walletd.errors import ClusterUnavailable

__all__ = ["ForwardServer"]

log = structlog.get_logger(__name__)

SCAN_SECONDS = 3.0  # the owner looks for unclaimed rows this often even without a notification
PURGE_SECONDS = 30.0  # how often a ForwardServer purges abandoned rows
KEEP_SECONDS = 60.0  # rows expired longer ago than this are abandoned (their origin is gone)
HANDLER_TIMEOUT = 90.0  # as the API server's handler_timeout: a handler never runs longer
MAX_CONCURRENT = 16  # forwarded requests a host runs at once

_INTERNAL = b'{"error":{"code":"internal","message":"internal error; see walletd\'s log"}}'


@attrs.frozen
class _Claimed:
    row_id: int
    from_host: str
    call: ForwardedCall


class ForwardServer:
    """The owner's side: claims the rows addressed to this host, each exactly once, runs them
    through `handler` (at most `max_concurrent` at a time) and writes the replies back."""

    def __init__(
        self,
        db: Database,
        listener: Listener,
        host_id: str,
        handler: ForwardHandler,
        *,
        max_concurrent: int = MAX_CONCURRENT,
        scan_seconds: float = SCAN_SECONDS,
        purge_seconds: float = PURGE_SECONDS,
        keep_seconds: float = KEEP_SECONDS,
        handler_timeout: float = HANDLER_TIMEOUT,
    ) -> None:
        self.db = db
        self.listener = listener
        self.host_id = host_id
        self.handler = handler
        self.scan_seconds = scan_seconds
        self.purge_seconds = purge_seconds
        self.keep_seconds = keep_seconds
        self.handler_timeout = handler_timeout
        self._slots = trio.Semaphore(max_concurrent)
        self._max_concurrent = max_concurrent
        self._claiming = True
        self._idle = trio.CancelScope()  # the wait for new rows; cancelled by stop_claiming
        self._answered = 0  # requests run here and answered
        self.replies_dropped = 0  # answered after the origin gave up (row gone)
        self.purged = 0

    def statistics(self) -> ForwardingStatistics:
        """Requests forwarded here that this host ran and answered (since start)."""
        return ForwardingStatistics(answered=self._answered)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (cancelling also cancels the requests being run)."""
        with self.listener.subscribe(forward_channel(self.host_id)) as sub:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._purge_loop)
                task_status.started()
                while self._claiming:
                    await self._claim_all(nursery)
                    self._idle = trio.CancelScope(deadline=trio.current_time() + self.scan_seconds)
                    if not self._claiming:
                        break
                    with self._idle:
                        await sub.wait()  # payloads need no reading: we claim what is there
                await trio.sleep_forever()  # the requests claimed before the stop run on

    async def stop_claiming(self) -> None:
        """A graceful stop, before the sessions close: claim no more rows (the origins see this
        host gone and serve them elsewhere once its leases are free, rather than having them
        answered "shutting down" here), and wait until the requests claimed already are
        answered (the caller bounds the wait). A claim under way finishes and is served."""
        self._claiming = False
        self._idle.cancel()
        taken = 0
        try:
            while taken < self._max_concurrent:  # every slot free: nothing claimed is running
                await self._slots.acquire()
                taken += 1
        finally:
            for _ in range(taken):
                self._slots.release()

    async def _claim_all(self, nursery: trio.Nursery) -> None:
        """Claim and start rows while there are some, a slot is free and we still claim."""
        while self._claiming:
            await self._slots.acquire()
            if not self._claiming:
                self._slots.release()
                return
            try:
                claimed = await self.db.run(self._claim_job())
            except ClusterUnavailable as exc:
                self._slots.release()
                log.warning("forwarded requests: cannot claim", error=str(exc))
                return  # the next scan tries again
            except BaseException:
                self._slots.release()
                raise
            if claimed is None:
                self._slots.release()
                return
            nursery.start_soon(self._serve, claimed)

    async def _serve(self, claimed: _Claimed) -> None:
        call = claimed.call
        try:
            reply = await self._run_handler(call)
            try:
                written = await self.db.run(self._answer_job(claimed.row_id, reply))
            except ClusterUnavailable as exc:
                log.warning(
                    "forwarded request: reply not written", id=claimed.row_id, error=str(exc)
                )
                return
            if written:
                self._answered += 1
            else:
                self.replies_dropped += 1
                log.warning(
                    "forwarded request answered after its origin gave up",
                    id=claimed.row_id,
                    from_host=claimed.from_host,
                    method=call.method,
                    path=call.path,
                )
        finally:
            self._slots.release()

    async def _run_handler(self, call: ForwardedCall) -> ForwardedReply:
        with trio.move_on_after(self.handler_timeout):
            try:
                return await self.handler(call)
            except Exception:
                # Never log the call itself: its body may hold wallet passwords.
                log.exception("forwarded request failed", method=call.method, path=call.path)
                return ForwardedReply(500, _INTERNAL)
        log.warning("forwarded request timed out", method=call.method, path=call.path)
        message = f"no answer within {self.handler_timeout:g} s"
        body = json.dumps({"error": {"code": "timeout", "message": message}}).encode()
        return ForwardedReply(504, body)

    async def _purge_loop(self) -> None:
        while True:
            try:
                self.purged += await self.db.run(self._purge_job())
            except ClusterUnavailable as exc:
                log.warning("forwarded requests: purge failed", error=str(exc))
            await trio.sleep(self.purge_seconds)

    async def purge(self) -> int:
        """Delete rows whose origin stopped waiting more than `keep_seconds` ago; their number."""
        count = await self.db.run(self._purge_job())
        self.purged += count
        return count

    # ---- the jobs (worker threads) --------------------------------------------------------------

    def _claim_job(self) -> Callable[[Connection], _Claimed | None]:
        def job(conn: Connection) -> _Claimed | None:
            # SKIP LOCKED: two servers (one host started twice by mistake) do not wait on each
            # other; the row lock and `claimed_at IS NULL`, re-checked on the locked row, make
            # the claim exactly once. The body is erased as it is claimed (read from `next`).
            row = conn.execute(
                """
                WITH next AS (
                    SELECT id, body FROM forwarded_requests
                    WHERE to_host = %s AND claimed_at IS NULL AND expires_at > cluster_now()
                    ORDER BY id LIMIT 1
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE forwarded_requests f SET claimed_at = cluster_now(), body = NULL
                FROM next WHERE f.id = next.id
                RETURNING f.id, f.from_host, f.method, f.path, f.segments, f.query, next.body,
                    f.escrow_id
                """,
                (self.host_id,),
            ).fetchone()
            if row is None:
                return None
            row_id, from_host, method, path, segments, query, body, escrow_id = row
            call = ForwardedCall(
                method=str(method),
                path=str(path),
                segments=tuple(str(s) for s in segments),
                query={str(k): str(v) for k, v in query.items()},
                body=bytes(body or b""),
                escrow_id=None if escrow_id is None else str(escrow_id),
            )
            return _Claimed(int(row_id), str(from_host), call)

        return job

    @staticmethod
    def _answer_job(row_id: int, reply: ForwardedReply) -> Callable[[Connection], bool]:
        def job(conn: Connection) -> bool:
            row = conn.execute(
                """
                UPDATE forwarded_requests SET status = %s, content_type = %s, reply = %s,
                    reply_headers = %s, answered_at = cluster_now()
                WHERE id = %s AND answered_at IS NULL
                RETURNING from_host
                """,
                (
                    reply.status,
                    reply.content_type,
                    reply.body,
                    Jsonb([list(h) for h in reply.headers]),
                    row_id,
                ),
            ).fetchone()
            if row is None:
                return False  # the origin gave up and deleted it
            notify(conn, reply_channel(str(row[0])), str(row_id))
            return True

        return job

    def _purge_job(self) -> Callable[[Connection], int]:
        def job(conn: Connection) -> int:
            cur = conn.execute(
                "DELETE FROM forwarded_requests"
                " WHERE expires_at < cluster_now() - make_interval(secs => %s)",
                (self.keep_seconds,),
            )
            return cur.rowcount

        return job
