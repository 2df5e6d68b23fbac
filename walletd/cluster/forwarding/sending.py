"""The origin's side of forwarding: a request written as a row for the owner, its reply awaited.

`Forwarder.forward` inserts the row (and, in the same transaction, notifies the owner's channel),
waits for the reply (woken by the reply channel, re-reading its row slowly in case a notification
was lost), deletes the row once it has the reply, and withdraws an unclaimed row when it gives up,
so that request never runs. What the caller learns when no answer comes says whether the request
ran: `OwnerDidNotAnswer` (not run, retry is safe), `ForwardOutcomeUnknown` or `OwnerGone` (it may
have run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import structlog
import trio
from psycopg.types.json import Jsonb

from walletd.cluster.db import Connection, Database
from walletd.cluster.forwarding.records import (
    ForwardedCall,
    ForwardedReply,
    ForwardingStatistics,
    OwnerCheck,
    forward_channel,
    reply_channel,
)
from walletd.cluster.notifications import Listener, Wakeup, notify
from walletd.errors import ClusterUnavailable, ForwardOutcomeUnknown, OwnerDidNotAnswer, OwnerGone

__all__ = ["Forwarder"]

log = structlog.get_logger(__name__)

POLL_SECONDS = 1.0  # the origin re-reads its row this often even without a notification
GIVE_UP_SECONDS = 5.0  # time allowed to delete the row after a timeout or a cancel
_GONE: Literal["gone"] = "gone"  # the claimed request's owner can no longer answer


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
        self._answered = 0  # calls another host answered for this one
        self._not_answered = 0  # withdrawn unclaimed at the timeout
        self._unknown = 0  # claimed but not answered in time

    def statistics(self) -> ForwardingStatistics:
        """Calls forwarded from here: answered, withdrawn unrun, outcome unknown (since start)."""
        return ForwardingStatistics(
            answered=self._answered, not_answered=self._not_answered, unknown=self._unknown
        )

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
            self._unknown += 1
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
                    self._unknown += 1
                    log.warning("forwarded request's owner gone", id=row_id, to_host=to_host)
                    raise OwnerGone(
                        f"owner host {to_host} took the request and then lost the escrow"
                        " (it stopped answering); its outcome is unknown"
                    )
                raise self._timed_out(row_id, to_host, found)
            reply = found  # it came at the last moment
        self._answered += 1
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
            self._not_answered += 1
            log.warning("forwarded request withdrawn unanswered", id=row_id, to_host=to_host)
            return OwnerDidNotAnswer(
                f"owner host {to_host} did not answer in time; the request was not run"
            )
        self._unknown += 1
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
