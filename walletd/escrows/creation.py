"""Creating an escrow: three new wallets made one 2-of-3 multisig, or nothing left behind.

Creation: the escrow is recorded as `creating` first (so a crash leaves a trace to clean up), its
three wallets are created in three processes and made one 2-of-3 multisig by the session, and only
then does it become `awaiting_funding`. A failure half way closes the session, moves the new wallet
files aside (never deletes a wallet) and removes the record; the error names the step. From its
first step to its last a creation holds a claim on its id, files and address (service):
an adoption of the same id, or of files or an address it holds, is a `Conflict`, and so is a
creation whose derived file names a recorded escrow already uses. Files another escrow uses are
never moved aside, whatever their name.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import structlog
import trio

from walletd.errors import (
    PublicError,
    RpcCallError,
    RpcError,
    Unavailable,
    WalletError,
    public_error,
)
from walletd.escrows.model import EscrowRecord, EscrowState, WalletRef
from walletd.escrows.service import EscrowService
from walletd.ids import ROLES, Role, wallet_file_for
from walletd.sessions.messages import SetupMultisig
from walletd.sessions.registry import Caller, Registry
from walletd.sessions.session import NO_DAEMON_CONNECTION, SessionSpec, WalletSpec
from walletd.state.events import EventLog
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.state.vault import Vault
from walletd.wallets import multisig
from walletd.wallets.chain import Chain

__all__ = ["Creation"]

log = structlog.get_logger(__name__)


class Creation:
    def __init__(
        self,
        *,
        store: StateStore,
        escrows: EscrowService,
        registry: Registry,
        events: EventLog,
        vault: Vault,
        chain: Chain,
        wallet_dir: Path,
        state_dir: Path,
        daemon_check: float,
        ownership: Ownership,
    ) -> None:
        self._store = store
        self._escrows = escrows
        self._registry = registry
        self._events = events
        self._vault = vault
        self._chain = chain
        self._wallet_dir = wallet_dir
        self._state_dir = state_dir  # abandoned wallet files go under it
        self._daemon_check = daemon_check  # how long monerod may take to answer before a create
        self._ownership = ownership
        self._creating: dict[str, trio.Event] = {}

    async def create(
        self, escrow_id: str, amount: int, confirmations: int | None, digest: str
    ) -> tuple[EscrowRecord, bool]:
        """Create the escrow's wallets and multisig; returns (record, created) like `adopt`."""
        if (
            await self._store.escrow_state(escrow_id) is None
        ):  # a retry of a made escrow needs no monerod
            await self._check_daemon()
        while True:
            existing = await self._escrows.existing_for_retry(escrow_id, digest)
            if existing is None:
                break
            if existing.state is not EscrowState.CREATING:
                return existing, False
            waiting = self._creating.get(escrow_id)
            if waiting is None:  # left by a crash; recovery at start-up normally clears these
                await self.abandon(existing, "stale creating record")
                continue
            await waiting.wait()  # an identical request is creating it: share its result
        files = {role: wallet_file_for(escrow_id, role) for role in ROLES}
        # In a cluster the new escrow is this host's from before its record exists (its record
        # is written under the lease): a creation on another host is OwnedElsewhere here.
        async with self._ownership.holding(escrow_id):
            # An adoption of this id in flight (not recorded yet) or another escrow using
            # these file names is a Conflict here, before any file moves.
            await self._escrows.claim(escrow_id, "create", files.values())
            try:
                return await self._create_claimed(escrow_id, amount, confirmations, digest, files)
            finally:
                self._escrows.release_claim(escrow_id)

    async def _check_daemon(self) -> None:
        """The new wallets refresh from monerod as the multisig is made: with monerod down or
        hanging a creation is 503 unavailable at once (retry later), and nothing is recorded."""
        try:
            with trio.fail_after(self._daemon_check):
                await self._chain.height()
        except trio.TooSlowError:
            raise Unavailable(f"monerod: no answer in {self._daemon_check} s") from None
        except RpcError as exc:
            raise Unavailable(f"monerod: {exc}") from None

    async def _create_claimed(
        self,
        escrow_id: str,
        amount: int,
        confirmations: int | None,
        digest: str,
        files: dict[Role, str],
    ) -> tuple[EscrowRecord, bool]:
        rec = EscrowRecord.new(
            escrow_id=escrow_id,
            state=EscrowState.CREATING,
            amount=amount,
            required_confirmations=confirmations or self._escrows.required_confirmations,
            multisig_address=None,
            origin="created",
            wallets={role: WalletRef(files[role]) for role in ROLES},
            request_digest=digest,
        )
        await self._set_aside_files(rec, "leftover before create")
        await self._store.insert_escrow(rec)
        done = self._creating[escrow_id] = trio.Event()
        try:
            spec = SessionSpec(
                escrow_id=escrow_id,
                wallets={
                    role: WalletSpec(ref.file, self._vault.derived_password(escrow_id, role))
                    for role, ref in rec.wallets.items()
                },
                address=None,
                create=True,
            )
            # A creation waits for a slot with the payouts (a buyer waits to pay into it).
            address = await self._registry.call(
                escrow_id, SetupMultisig(), caller=Caller.API_MONEY, spec=spec
            )
            await self._escrows.claim_address(escrow_id, address)  # new keys: a clash is a bug
            created = {"origin": "created", "amount": amount, "address": address}
            rec = await self._events.change(
                escrow_id,
                [("escrow_created", created)],
                state=EscrowState.AWAITING_FUNDING,
                multisig_address=address,
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self.abandon(rec, f"creation failed: {exc}")
            if isinstance(exc, Exception):
                raise _creation_error(exc) from exc
            raise
        finally:
            del self._creating[escrow_id]
            done.set()
        if self._registry.is_open(escrow_id):
            await self._events.emit("session_opened", escrow_id)
        return rec, True

    async def abandon(self, rec: EscrowRecord, why: str) -> None:
        """Undo a creation: close the session, move the files aside, forget the record."""
        log.warning("abandoning escrow creation", escrow_id=rec.escrow_id, why=why[:300])
        await self._registry.close(rec.escrow_id, reason="explicit")
        await self._set_aside_files(rec, why)
        await self._store.delete_escrow(rec.escrow_id)

    async def _set_aside_files(self, rec: EscrowRecord, why: str) -> None:
        """Move wallet files of a never-announced escrow to state_dir/abandoned (never delete).

        A file another escrow (recorded, or being registered) uses stays where it is: it is that
        escrow's wallet, whatever its name says."""
        wallet_dir = self._wallet_dir
        target = self._state_dir / "abandoned" / f"{int(time.time() * 1000)}"
        in_use = await self._escrows.files_in_use(except_escrow=rec.escrow_id)
        moved = []
        for ref in rec.wallets.values():
            if ref.file in in_use:
                log.error(
                    "wallet file of another escrow not set aside",
                    escrow_id=rec.escrow_id,
                    file=ref.file,
                    why=why[:300],
                )
                continue
            for suffix in ("", ".keys", ".address.txt"):
                path = wallet_dir / f"{ref.file}{suffix}"
                if path.exists():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                    shutil.move(path, target / path.name)
                    moved.append(path.name)
        if moved:
            log.warning("wallet files set aside", files=moved, to=str(target), why=why[:300])


def _creation_error(exc: Exception) -> PublicError:
    rpc = exc.rpc_error if isinstance(exc, multisig.MultisigError) else exc
    if isinstance(rpc, RpcCallError) and rpc.code == NO_DAEMON_CONNECTION:
        # monerod went away after the check in create(): the caller may retry, nothing is kept.
        return Unavailable(f"escrow creation failed: monerod unreachable ({rpc.method})")
    if isinstance(exc, multisig.MultisigError):
        return WalletError(f"escrow creation failed at step {exc.step}: {exc}")
    if isinstance(exc, RpcCallError):
        return WalletError(f"escrow creation failed at step {exc.method}: {exc.rpc_message}")
    public = public_error(exc)
    return type(public)(f"escrow creation failed: {public.message}")
