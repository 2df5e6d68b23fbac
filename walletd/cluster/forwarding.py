"""Requests forwarded through the database to the host whose session holds the escrow.

Any host answers any request (issue 14). When the escrow's session is open on another live host,
the request is not served by moving the session here and back: it is written as a row addressed
to the owner, and `pg_notify` on the owner's channel, in the same transaction, wakes it. The
owner's `ForwardServer` claims the row exactly once, runs it through the same handler as a local
request, writes the reply into the row and notifies the origin's reply channel. The origin's
`Forwarder` reads the reply, deletes the row and answers its client.

Why the database, not host-to-host connections: hosts already share it, it needs no addresses,
ports or TLS between hosts, and a row makes the outcome decidable. A request either was claimed
(its owner ran or is running it) or was not, and the origin that gives up deletes an unclaimed
row, so that request never runs. The origin tells its client which of the two it was:
`OwnerDidNotAnswer` (not run: safe to retry) or `ForwardOutcomeUnknown` (may have run).

Rows live only as long as needed, since request bodies may carry wallet passwords: the body is
erased when the row is claimed, the row is deleted when the reply is read or the origin gives up,
and `ForwardServer` periodically purges rows whose origin stopped waiting long ago (a crashed
host's). A row past its `expires_at` (the origin's deadline, by the database clock) is never
claimed, even when the origin could not delete it. Notifications can be lost: the origin polls its
row slowly, and the owner scans for unclaimed rows on start and every few seconds. Bodies and
replies are never logged.

This layer cannot import the API (`walletd.api` sits above it): `ForwardedCall` and
`ForwardedReply` are the seam, and the API converts its Request and Response to and from them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import attrs
import structlog
import trio
from psycopg.types.json import Jsonb

from walletd.cluster.db import Connection, Database
from walletd.cluster.notifications import Listener, Wakeup, notify
from walletd.errors import (
    ClusterUnavailable,
    ForwardOutcomeUnknown,
    OwnerDidNotAnswer,
    OwnerGone,
)

__all__ = [
    "ForwardHandler",
    "ForwardServer",
    "ForwardedCall",
    "ForwardedReply",
    "Forwarder",
    "forward_channel",
    "forwarding_channels",
    "reply_channel",
]

log = structlog.get_logger(__name__)

POLL_SECONDS = 1.0  # the origin re-reads its row this often even without a notification
SCAN_SECONDS = 3.0  # the owner looks for unclaimed rows this often even without a notification
PURGE_SECONDS = 30.0  # how often a ForwardServer purges abandoned rows
KEEP_SECONDS = 60.0  # rows expired longer ago than this are abandoned (their origin is gone)
GIVE_UP_SECONDS = 5.0  # time allowed to delete the row after a timeout or a cancel
HANDLER_TIMEOUT = 90.0  # as the API server's handler_timeout: a handler never runs longer
MAX_CONCURRENT = 16  # forwarded requests a host runs at once

_INTERNAL = b'{"error":{"code":"internal","message":"internal error; see walletd\'s log"}}'


def _channel(prefix: str, host_id: str) -> str:
    # Host ids are free text (a hostname by default) and channel names are identifiers of at
    # most 63 bytes: a digest keeps every channel name valid and distinct.
    return prefix + hashlib.sha256(host_id.encode()).hexdigest()[:32]


def forward_channel(host_id: str) -> str:
    """The channel that wakes `host_id`'s ForwardServer (payload: the row id)."""
    return _channel("walletd_fwd_", host_id)


def reply_channel(host_id: str) -> str:
    """The channel that wakes `host_id`'s Forwarder when a reply is written (payload: row id)."""
    return _channel("walletd_rep_", host_id)


def forwarding_channels(host_id: str) -> tuple[str, str]:
    """The channels a host's Listener must LISTEN on for forwarding, both ways."""
    return forward_channel(host_id), reply_channel(host_id)


@attrs.frozen
class ForwardedCall:
    """A request as the owner's handler needs it. `segments` are the path's segments decoded one
    by one (what routes use: re-splitting the decoded `path` could re-route `e1%2Fbalance`)."""

    method: str
    path: str
    segments: tuple[str, ...]
    query: Mapping[str, str]
    body: bytes = attrs.field(repr=False)  # may hold wallet passwords
    escrow_id: str | None = None


@attrs.frozen
class ForwardedReply:
    status: int
    body: bytes = attrs.field(repr=False)
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


ForwardHandler = Callable[[ForwardedCall], Awaitable[ForwardedReply]]
OwnerCheck = Callable[[], Awaitable[bool]]  # True once the owner can no longer answer
_GONE: Literal["gone"] = "gone"


def _reply_from_row(status: Any, content_type: Any, reply: Any, headers: Any) -> ForwardedReply:
    return ForwardedReply(
        int(status),
        bytes(reply or b""),
        str(content_type),
        tuple((str(k), str(v)) for k, v in (headers or ())),
    )


class Forwarder:
    """The origin's side: `forward` a call to another host and wait for its reply.

    `run` must be running (it dispatches reply notifications to the waiting calls); without it
    calls still complete, at the pace of the slow poll."""

    def __init__(
        self,
        db: Database,
        listener: Listener,
        host_id: str,
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.db = db
        self.listener = listener
        self.host_id = host_id
        self.poll_seconds = poll_seconds
        self._waiting: dict[int, trio.Event] = {}
        self.forwarded = 0  # calls answered by another host (metrics, once wired)
        self.not_answered = 0  # withdrawn unclaimed at the timeout
        self.unknown = 0  # claimed but not answered in time

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake each waiting call when its reply is announced (all of them after a possible
        loss of notifications)."""
        with self.listener.subscribe(reply_channel(self.host_id)) as sub:
            task_status.started()
            while True:
                self._dispatch(await sub.wait())

    def _dispatch(self, wakeup: Wakeup) -> None:
        if wakeup.missed:
            for event in self._waiting.values():
                event.set()
            return
        for payload in wakeup.payloads:
            try:
                waiter = self._waiting.get(int(payload))
            except ValueError:
                continue
            if waiter is not None:
                waiter.set()

    async def forward(
        self,
        to_host: str,
        call: ForwardedCall,
        *,
        timeout: float,
        claim_timeout: float | None = None,
        owner_gone: OwnerCheck | None = None,
    ) -> ForwardedReply:
        """Have `to_host` run `call` and return its reply.

        Raises OwnerDidNotAnswer if `to_host` did not claim it within `claim_timeout` (a live
        owner claims within milliseconds: a dead one never does) or `timeout` (it then never
        runs), ForwardOutcomeUnknown if it claimed it but did not answer in time (or the
        database failed after it was claimed), OwnerGone as soon as `owner_gone()` (asked at
        each poll while the request is claimed and unanswered) says the owner can no longer
        answer (it lost the escrow: it died right after claiming), and ClusterUnavailable if
        the database fails before that. Cancelling the caller withdraws the row too.

        Known limit: if the database fails while committing the insert, ClusterUnavailable is
        raised although the row may exist (and then run): as with any lost answer, retries of
        state-changing calls rely on the API's idempotency."""
        if to_host == self.host_id:
            raise ValueError("a host does not forward to itself")
        row_id = await self.db.run(self._insert_job(to_host, call, timeout))
        try:
            reply = await self._await_reply(row_id, timeout, claim_timeout, owner_gone)
        except Exception as exc:
            # The database failed while we waited: withdrawn unrun, the error stands as it is
            # (retry is safe); otherwise the owner may have run it, and the caller must know.
            found = await self._withdraw(row_id)
            if found == "unclaimed":
                raise
            self.unknown += 1
            raise ForwardOutcomeUnknown(
                f"the request forwarded to owner host {to_host} may have run, but its answer"
                " was lost (cluster database failed); its outcome is unknown"
            ) from exc
        except BaseException:
            await self._withdraw(row_id)  # cancelled: withdraw it, so it never runs later
            raise
        if reply is None or reply == _GONE:
            found = await self._withdraw(row_id)
            if not isinstance(found, ForwardedReply):
                if reply == _GONE and found != "unclaimed":
                    self.unknown += 1
                    log.warning("forwarded request's owner gone", id=row_id, to_host=to_host)
                    raise OwnerGone(
                        f"owner host {to_host} took the request and then lost the escrow"
                        " (it stopped answering); its outcome is unknown"
                    )
                raise self._timed_out(row_id, to_host, found)
            reply = found  # it came at the last moment
        self.forwarded += 1
        return reply

    async def _await_reply(
        self,
        row_id: int,
        timeout: float,
        claim_timeout: float | None,
        owner_gone: OwnerCheck | None = None,
    ) -> ForwardedReply | Literal["gone"] | None:
        claim_by = trio.current_time() + (timeout if claim_timeout is None else claim_timeout)
        try:
            with trio.move_on_after(timeout):
                while True:
                    woken = trio.Event()
                    self._waiting[row_id] = woken  # before the read: a reply after it wakes us
                    reply = await self.db.run(self._take_reply_job(row_id))
                    if isinstance(reply, ForwardedReply):
                        return reply
                    wait = self.poll_seconds
                    if reply == "claimed" and owner_gone is not None and await owner_gone():
                        return _GONE  # claimed, and its owner will never answer
                    if reply == "unclaimed":
                        if trio.current_time() >= claim_by:
                            return None  # withdrawn by the caller: the owner is not taking it
                        wait = min(wait, claim_by - trio.current_time())  # look again then
                    with trio.move_on_after(wait):
                        await woken.wait()
            return None
        finally:
            self._waiting.pop(row_id, None)

    async def _withdraw(self, row_id: int) -> ForwardedReply | str:
        """Delete the row whatever its state (shielded: also when the caller is cancelled).
        Returns its reply if one came at the last moment, else what became of the request:
        "unclaimed" (never ran, never will), "claimed" or "unknown" (row gone, or no database).
        """
        with trio.CancelScope(shield=True), trio.move_on_after(GIVE_UP_SECONDS):
            try:
                return await self.db.run(self._delete_job(row_id))
            except ClusterUnavailable:
                # Still unclaimable: the row expired by the database clock before our timeout.
                log.warning("forwarded request not withdrawn (database failed)", id=row_id)
        return "unknown"

    def _timed_out(self, row_id: int, to_host: str, found: str) -> Exception:
        if found == "unclaimed":
            self.not_answered += 1
            log.warning("forwarded request withdrawn unanswered", id=row_id, to_host=to_host)
            return OwnerDidNotAnswer(
                f"owner host {to_host} did not answer in time; the request was not run"
            )
        self.unknown += 1
        log.warning("forwarded request outcome unknown", id=row_id, to_host=to_host)
        return ForwardOutcomeUnknown(
            f"owner host {to_host} took the request but did not answer in time;"
            " its outcome is unknown"
        )

    # ---- the jobs (worker threads) --------------------------------------------------------------

    def _insert_job(
        self, to_host: str, call: ForwardedCall, timeout: float
    ) -> Callable[[Connection], int]:
        def job(conn: Connection) -> int:
            row = conn.execute(
                """
                INSERT INTO forwarded_requests
                    (escrow_id, from_host, to_host, method, path, segments, query, body,
                     expires_at)
                VALUES (%(e)s, %(f)s, %(t)s, %(m)s, %(p)s, %(s)s, %(q)s, %(b)s,
                        cluster_now() + make_interval(secs => %(timeout)s))
                RETURNING id
                """,
                {
                    "e": call.escrow_id,
                    "f": self.host_id,
                    "t": to_host,
                    "m": call.method,
                    "p": call.path,
                    "s": Jsonb(list(call.segments)),
                    "q": Jsonb(dict(call.query)),
                    "b": call.body,
                    "timeout": timeout,
                },
            ).fetchone()
            assert row is not None
            row_id = int(row[0])
            # Delivered at commit, so the owner never wakes before the row is visible.
            notify(conn, forward_channel(to_host), str(row_id))
            return row_id

        return job

    def _take_reply_job(
        self, row_id: int
    ) -> Callable[[Connection], ForwardedReply | Literal["claimed", "unclaimed"]]:
        def job(conn: Connection) -> ForwardedReply | Literal["claimed", "unclaimed"]:
            row = conn.execute(
                "DELETE FROM forwarded_requests WHERE id = %s AND answered_at IS NOT NULL"
                " RETURNING status, content_type, reply, reply_headers",
                (row_id,),
            ).fetchone()
            if row:
                return _reply_from_row(*row)
            claimed = conn.execute(
                "SELECT claimed_at IS NOT NULL FROM forwarded_requests WHERE id = %s", (row_id,)
            ).fetchone()
            return "claimed" if claimed is None or claimed[0] else "unclaimed"

        return job

    @staticmethod
    def _delete_job(row_id: int) -> Callable[[Connection], ForwardedReply | str]:
        def job(conn: Connection) -> ForwardedReply | str:
            row = conn.execute(
                "DELETE FROM forwarded_requests WHERE id = %s"
                " RETURNING claimed_at IS NOT NULL, answered_at IS NOT NULL,"
                " status, content_type, reply, reply_headers",
                (row_id,),
            ).fetchone()
            if row is None:
                return "unknown"  # gone (purged?): it may have run
            if row[1]:
                return _reply_from_row(*row[2:])
            return "claimed" if row[0] else "unclaimed"

        return job


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
        self.served = 0  # requests run and answered (metrics, once wired)
        self.replies_dropped = 0  # answered after the origin gave up (row gone)
        self.purged = 0

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
                self.served += 1
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
