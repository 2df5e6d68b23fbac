"""Escrows: their records, the wallet specs their sessions open, and the read operations on them.

This is the layer between the API and the registry: it turns an escrow id into the three wallet
files and passwords a session needs (passwords come from the vault, never from the database in
clear), adopts existing multisig wallet files, and shapes the escrow object of api.md.

One escrow per escrow id, per wallet file and per multisig address. Two escrows on one set of
wallets (or on a copy of them: same address) would both turn `ready` on one deposit, and a
release of either would sweep it. The database says what recorded escrows hold; a registration
in flight (an adoption, or a creation, from its first step until it is recorded or undone) holds
its id, its files and, once learnt, its address as a *claim* here. A claim is checked against
the database and the other claims and taken with no await in between (trio switches tasks only
at an await), so of two overlapping requests for one id, file or address exactly one gets it and
the other gets `Conflict`, before any wallet is opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import attrs
import structlog
import trio

from walletd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    NotReady,
    RpcCallError,
    SessionFailed,
    WalletdError,
    WalletError,
)
from walletd.escrows.model import EscrowRecord, EscrowState, Payout, WalletRef
from walletd.ids import ROLES, Role, check_adoptable_wallet_file
from walletd.jsontypes import JsonMapping, JsonObject
from walletd.sessions.messages import Balance, GetBalance, GetTransfer, MultisigStatus, Transfer
from walletd.sessions.registry import Caller, Registry
from walletd.sessions.session import SessionSpec, WalletSpec
from walletd.state.events import EventLog
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.state.vault import Vault

__all__ = ["STATES", "EscrowService"]

log = structlog.get_logger(__name__)

# The states an escrow settles in (stats count these); `creating` only lasts one request.
STATES = tuple(s for s in EscrowState if s is not EscrowState.CREATING)


@attrs.define
class _Claims:
    """What registrations in flight hold (see the module doc); keyed by what must be unique."""

    ids: dict[str, Literal["adopt", "create"]] = attrs.Factory(dict)
    files: dict[str, str] = attrs.Factory(dict)  # wallet file -> escrow id
    addresses: dict[str, str] = attrs.Factory(dict)  # multisig address -> escrow id


class EscrowService:
    def __init__(
        self,
        store: StateStore,
        vault: Vault,
        registry: Registry,
        events: EventLog,
        *,
        wallet_dir: Path,
        required_confirmations: int,
        ownership: Ownership,
    ) -> None:
        self.ownership: Ownership = ownership
        self.store = store
        self.vault = vault
        self.registry = registry
        self.events = events
        self.wallet_dir = wallet_dir
        self.required_confirmations = required_confirmations
        self._claims = _Claims()

    # ---- lookups ---------------------------------------------------------------------------------

    async def get(self, escrow_id: str) -> EscrowRecord:
        """The record, an escrow being created included (`creating`, api.md since v1.1)."""
        rec = await self.store.get_escrow(escrow_id)
        if rec is None:
            raise NotFound(f"no escrow {escrow_id!r}")
        return rec

    async def check_exists(self, escrow_id: str) -> None:
        """NotFound for no escrow; NotReady for one being created, whose wallets and session
        belong to its creation until it ends (nothing else may open or close them).

        An open session with no registration in flight is a recorded escrow past its creation
        (creation and adoption hold their claim until the record says so, and an abandoned one
        is closed before its claim ends): answered without a database read, which a warm read
        on a cluster host would otherwise pay on every call."""
        if self.registry.is_open(escrow_id) and escrow_id not in self._claims.ids:
            return
        _check_usable(escrow_id, await self.store.escrow_state(escrow_id))

    async def spec_for(self, escrow_id: str) -> SessionSpec:
        """What the escrow's session opens (the registry's lookup)."""
        rec = await self.get(escrow_id)
        _check_usable(escrow_id, rec.state)
        return self._spec(rec)

    def _spec(self, rec: EscrowRecord) -> SessionSpec:
        return SessionSpec(
            escrow_id=rec.escrow_id,
            wallets={
                role: self._wallet_spec(rec.escrow_id, role, rec.wallets[role]) for role in ROLES
            },
            address=rec.multisig_address,
        )

    def _wallet_spec(self, escrow_id: str, role: Role, ref: WalletRef) -> WalletSpec:
        if ref.sealed_password is None:
            password = self.vault.derived_password(escrow_id, role)
        else:
            password = self.vault.unseal(escrow_id, role, ref.sealed_password)
        return WalletSpec(file=ref.file, password=password)

    def to_json(self, rec: EscrowRecord) -> JsonObject:  # Any: the JSON answer's values
        info = self.registry.session_info(rec.escrow_id)
        session: JsonObject = (
            {
                "open": True,
                "age_s": round(info.age_s, 3),
                "idle_s": round(info.idle_s, 3),
                "multisig_exchanged": info.exchanged,
            }
            if info
            else {"open": False}
        )
        return {
            "escrow_id": rec.escrow_id,
            "state": rec.state.value,
            "multisig_address": rec.multisig_address,
            "amount": rec.amount,
            "required_confirmations": rec.required_confirmations,
            "funding": {
                "balance": rec.funding.balance,
                "unlocked_balance": rec.funding.unlocked_balance,
                "confirmations": rec.funding.confirmations,
                "checked_at": rec.funding.checked_at,
            },
            "payout": _public_payout(rec.payout),
            "session": session,
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    async def list(self, state: str | None) -> list[EscrowRecord]:
        if state is not None and state not in {s.value for s in EscrowState}:
            raise InvalidRequest(f"state must be one of {', '.join(EscrowState)}")
        wanted = EscrowState(state) if state is not None else None
        return await self.store.list_escrows(wanted)

    # ---- reads through the session ---------------------------------------------------------------

    async def balance(self, escrow_id: str, *, refresh: bool) -> Balance:
        await self.check_exists(escrow_id)
        return await self.registry.call(escrow_id, GetBalance(refresh=refresh), caller=Caller.API)

    async def transfer(self, escrow_id: str, txid: str) -> Transfer:
        await self.check_exists(escrow_id)
        result = await self.registry.call(escrow_id, GetTransfer(txid), caller=Caller.API)
        if result is None:
            raise NotFound(f"escrow {escrow_id!r} wallets do not know transaction {txid}")
        return result

    # ---- claims: one escrow per id, wallet file and address -------------------------------------

    async def claim(
        self, escrow_id: str, kind: Literal["adopt", "create"], files: Iterable[str]
    ) -> None:
        """Take the id and the wallet files for a registration in flight, or raise Conflict.

        The database is read first; the in-process claims are checked and taken after it with
        no checkpoint between, so another task cannot split the check from the take. The
        caller must `release_claim` when the escrow is recorded or the attempt given up."""
        files = set(files)
        recorded = await self.store.wallet_files_in_use(except_escrow=escrow_id)
        other = self._claims.ids.get(escrow_id)
        if other is not None:
            raise Conflict(f"escrow {escrow_id!r} is being registered by another request ({other})")
        held = (recorded | self._claimed_files(except_escrow=escrow_id)) & files
        if held:
            raise Conflict(f"wallet file {sorted(held)[0]!r} belongs to another escrow")
        self._claims.ids[escrow_id] = kind
        self._claims.files.update(dict.fromkeys(files, escrow_id))

    async def claim_address(self, escrow_id: str, address: str) -> None:
        """Take the multisig address a registration in flight has learnt, or raise Conflict if
        another escrow, recorded or in flight, has it (its wallet files copied elsewhere)."""
        recorded = await self.store.escrow_with_address(address)
        owner = recorded or self._claims.addresses.get(address)  # no checkpoint from here on
        if owner is not None and owner != escrow_id:
            raise Conflict(
                "the wallets' multisig address belongs to another escrow: "
                "these files are copies of its wallets"
            )
        self._claims.addresses[address] = escrow_id

    def release_claim(self, escrow_id: str) -> None:
        """Drop what `claim` and `claim_address` took for the escrow (the record holds it now,
        or nothing does)."""
        self._claims.ids.pop(escrow_id, None)
        for table in (self._claims.files, self._claims.addresses):
            for key in [k for k, owner in table.items() if owner == escrow_id]:
                del table[key]

    async def files_in_use(self, *, except_escrow: str | None = None) -> set[str]:
        """Wallet files held by a recorded escrow or a registration in flight, but
        `except_escrow`'s own: files walletd must never open for, or move from, another escrow."""
        recorded = await self.store.wallet_files_in_use(except_escrow=except_escrow)
        return recorded | self._claimed_files(except_escrow=except_escrow)

    def _claimed_files(self, *, except_escrow: str | None) -> set[str]:
        return {f for f, owner in self._claims.files.items() if owner != except_escrow}

    # ---- adopting existing multisig wallet files -------------------------------------------------

    def request_digest(self, request: JsonMapping) -> str:
        """A keyed digest of a create request, to tell an identical retry from a conflict
        without keeping the request's passwords (a plain hash of a password is guessable)."""
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":")).encode()
        return self.vault.mac(canonical)

    async def existing_for_retry(self, escrow_id: str, digest: str) -> EscrowRecord | None:
        """The escrow if this is an identical retry; Conflict if the id is taken otherwise."""
        rec = await self.store.get_escrow(escrow_id)
        if rec is None:
            return None
        if rec.request_digest != digest:
            raise Conflict(f"escrow {escrow_id!r} exists with other values")
        return rec

    async def adopt(
        self,
        escrow_id: str,
        amount: int,
        required_confirmations: int | None,
        wallets: Mapping[Role, tuple[str, str]],
        digest: str,
    ) -> tuple[EscrowRecord, bool]:
        """Register three existing wallet files of one ready 2-of-3 multisig as an escrow.

        Returns (record, created). The id and the files are claimed before anything is opened;
        the session is opened and the files checked to be one ready 2-of-3 multisig whose address
        no other escrow has; only then is the escrow recorded, so a failure leaves nothing.
        """
        existing = await self.existing_for_retry(escrow_id, digest)
        if existing is not None:
            return existing, False
        files = {
            role: check_adoptable_wallet_file(wallets[role][0], self.wallet_dir) for role in ROLES
        }
        if len(set(files.values())) != 3:
            raise InvalidRequest("the three roles must name three different wallet files")
        # In a cluster: this host's from before the record exists (it is written under the lease).
        async with self.ownership.holding(escrow_id):
            return await self._adopt_held(
                escrow_id, amount, required_confirmations, wallets, files, digest
            )

    async def _adopt_held(
        self,
        escrow_id: str,
        amount: int,
        required_confirmations: int | None,
        wallets: Mapping[Role, tuple[str, str]],
        files: Mapping[Role, str],
        digest: str,
    ) -> tuple[EscrowRecord, bool]:
        await self.claim(escrow_id, "adopt", files.values())
        try:
            spec = SessionSpec(
                escrow_id=escrow_id,
                wallets={r: WalletSpec(files[r], wallets[r][1]) for r in ROLES},
                address=None,
            )
            address = await self._open_and_check_multisig(spec)
            try:
                await self.claim_address(escrow_id, address)
            except Conflict:
                await self._close_quietly(escrow_id)
                raise
            rec = EscrowRecord.new(
                escrow_id=escrow_id,
                state=EscrowState.AWAITING_FUNDING,
                amount=amount,
                required_confirmations=required_confirmations or self.required_confirmations,
                multisig_address=address,
                origin="adopted",
                wallets={
                    r: WalletRef(files[r], self.vault.seal(escrow_id, r, wallets[r][1]))
                    for r in ROLES
                },
                request_digest=digest,
            )
            try:
                await self.events.insert(
                    rec, [("escrow_created", {"origin": "adopted", "amount": amount})]
                )
            except BaseException:
                # Not recorded: the session opened to check the wallets must not stay behind
                # holding them for an escrow that does not exist.
                await self._close_quietly(escrow_id)
                raise
        finally:
            self.release_claim(escrow_id)
        if self.registry.is_open(escrow_id):
            await self.events.emit("session_opened", escrow_id)
        return rec, True

    async def _open_and_check_multisig(self, spec: SessionSpec) -> str:
        registry = self.registry
        try:
            await registry.open(spec.escrow_id, caller=Caller.API, spec=spec)
            infos = await registry.call(spec.escrow_id, MultisigStatus(), caller=Caller.API)
            address = registry.session_address(spec.escrow_id)
        except (RpcCallError, WalletError) as exc:
            await self._close_quietly(spec.escrow_id)
            said = exc.rpc_message if isinstance(exc, RpcCallError) else exc.message
            raise InvalidRequest(
                f"cannot open the wallets ({said}): a missing file, a wrong password, "
                "or a wallet open elsewhere"
            ) from exc
        except SessionFailed as exc:
            await self._close_quietly(spec.escrow_id)
            raise InvalidRequest(
                f"the three wallets are not one 2-of-3 multisig ({exc.message})"
            ) from exc
        except WalletdError:
            await self._close_quietly(spec.escrow_id)
            raise
        ok = all(
            i.multisig and i.ready and i.threshold == 2 and i.total == 3 for i in infos.values()
        )
        if not ok or address is None:
            await self._close_quietly(spec.escrow_id)
            raise InvalidRequest("the three wallets are not one ready 2-of-3 multisig")
        return address

    async def _close_quietly(self, escrow_id: str) -> None:
        with trio.CancelScope(shield=True):
            await self.registry.close(escrow_id, reason="explicit")


def _public_payout(payout: Payout | None) -> JsonObject | None:  # Any: JSON values
    if payout is None:
        return None
    return {
        "kind": payout.kind.value,
        "address": payout.address,
        "txid": payout.txid,
        "confirmations": payout.confirmations,
        "submitted_at": payout.submitted_at,
        "fee_priority": payout.fee_priority,
    }


def _check_usable(escrow_id: str, state: EscrowState | None) -> None:
    if state is None:
        raise NotFound(f"no escrow {escrow_id!r}")
    if state is EscrowState.CREATING:
        raise NotReady(f"escrow {escrow_id!r} is being created")
