"""The spending and multisig calls of a fake wallet-rpc process: where the money rules live.

transfer and sweep_all (output selection, change, the multisig proposal instead of a relay) and
the multisig calls (the experimental flag, key exchange rounds, export/import of multisig info,
signing and submitting) are the part of the fake that the escrow logic leans on hardest, so they
sit in their own module, next to nothing but the chain (`fake_chain`) whose rules they apply.
`FakeWalletRpc` takes them in as a base class; its dispatch finds every `_rpc_*` method.
"""

from __future__ import annotations

from typing import Final

from walletd.testing.fake_chain import (
    FEE,
    ExportInfo,
    FakeTx,
    FakeWallet,
    FakeWalletWorld,
    JsonObject,
    KexMsg,
    Owned,
    Proposal,
    TxSet,
    digest,
    fake_address,
    is_fake_address,
)
from walletd.testing.fake_rpc_wire import (
    RpcFault,
    is_hex,
    param_bool,
    param_destinations,
    param_int,
    param_str,
    param_str_list,
)

STALE: Final = (
    "Failed to sign multisig tx: This signature was made with stale data: export fresh multisig "
    "data, which other participants must then use"
)
MULTISIG_DISABLED: Final = (
    "This wallet is multisig, and multisig is disabled. Multisig is an experimental feature and "
    "may have bugs. You can enable it by running this once in monero-wallet-cli: "
    "set enable-multisig-experimental 1"
)


class SpendingCalls:
    """The `_rpc_*` methods that spend, and the multisig ones, of one fake process."""

    world: FakeWalletWorld

    def _wallet(self) -> FakeWallet:
        """The open wallet, or -13: provided by `FakeWalletRpc`."""
        raise NotImplementedError

    # ---- spending ----

    def _spendable(self, wallet: FakeWallet) -> tuple[list[Owned], list[Owned]]:
        """(unspent outputs, those a transaction can use now)."""
        if wallet.is_multisig:
            self._check_multisig_enabled(wallet)
        unspent = [o for o in self.world._owned(wallet) if not o.spent]
        usable = [o for o in unspent if o.unlocked and o.key_image_known and o.confirmations]
        return unspent, usable

    def _rpc_transfer(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        unspent, usable = self._spendable(wallet)
        dests = param_destinations(params)
        amount = sum(a for _, a in dests)
        need = amount + FEE
        have = sum(o.amount for o in usable)
        if wallet.is_multisig and (
            not wallet.ready
            or self.world._stale(wallet)
            or (have < need and not all(o.key_image_known for o in unspent))
        ):
            raise RpcFault(-16, "No transaction created")
        if sum(o.amount for o in unspent) < need:
            raise RpcFault(-17, "not enough money")
        if have < need:
            raise RpcFault(-37, "not enough unlocked money")
        inputs: list[Owned] = []
        for o in usable:
            inputs.append(o)
            if sum(i.amount for i in inputs) >= need:
                break
        change = sum(i.amount for i in inputs) - need
        outputs = (*dests, *([(wallet.address, change)] if change else []))
        tx_hash, txset = self._make_tx(wallet, inputs, tuple(outputs))
        return {
            "amount": amount,
            "fee": FEE,
            "tx_hash": tx_hash,
            "tx_key": "",
            "weight": 1500,
            "multisig_txset": txset,
            "unsigned_txset": "",
        }

    def _rpc_sweep_all(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        unspent, usable = self._spendable(wallet)
        address = param_str(params, "address")
        if not is_fake_address(address):
            raise RpcFault(-2, f"WALLET_RPC_ERROR_CODE_WRONG_ADDRESS: {address}")
        priority = param_int(params, "priority")
        if priority > 4:
            raise RpcFault(-1, "Invalid priority")
        self.world.sweep_priorities.append(priority)
        if wallet.is_multisig and (not wallet.ready or (usable and self.world._stale(wallet))):
            raise RpcFault(-16, "No transaction created")
        if not any(o.unlocked for o in unspent):
            raise RpcFault(-4, "No unlocked balance in the specified account")
        if not usable:  # outputs whose key image is not known yet cannot be swept
            raise RpcFault(-4, "No unlocked balance in the specified subaddress(es)")
        total = sum(o.amount for o in usable)
        if total <= FEE:
            raise RpcFault(-17, "not enough money")
        outputs: tuple[tuple[str, int], ...] = ((address, total - FEE),)
        if wallet.is_multisig and self.world.sweep_outputs is not None:
            outputs = self.world.sweep_outputs(wallet.address, address, total)
        tx_hash, txset = self._make_tx(wallet, usable, outputs)
        return {
            "tx_hash_list": [tx_hash],
            "amount_list": [total - FEE],
            "fee_list": [FEE],
            "weight_list": [1500],
            "multisig_txset": txset,
            "unsigned_txset": "",
        }

    def _rpc_describe_transfer(self, params: JsonObject) -> JsonObject:
        """A multisig proposal decoded: what the transaction pays, as 0.18 reports it."""
        wallet = self._ready_wallet()
        blob = param_str(params, "multisig_txset")
        txset = self.world._blob(blob) if is_hex(blob) else None
        if not isinstance(txset, TxSet) or txset.proposal.address != wallet.address:
            raise RpcFault(-40, "Failed to parse multisig tx data.")
        proposal = txset.proposal
        amount_in = sum(self.world.txs[txid].outputs[index][1] for txid, index in proposal.inputs)
        amount_out = sum(amount for _, amount in proposal.outputs)
        change = sum(amount for addr, amount in proposal.outputs if addr == wallet.address)
        recipients = [
            {"address": addr, "amount": amount}
            for addr, amount in proposal.outputs
            if addr != wallet.address
        ]
        desc = {
            "amount_in": amount_in,
            "amount_out": amount_out,
            "ring_size": 16,
            "unlock_time": proposal.unlock_time,
            "recipients": recipients,
            "payment_id": proposal.payment_id,
            "change_amount": change,
            "change_address": wallet.address if change else "",
            "fee": amount_in - amount_out,
            "dummy_outputs": 0,
            "extra": "",
        }
        summary = {k: desc[k] for k in ("amount_in", "amount_out", "recipients", "fee")}
        summary |= {"change_amount": change, "change_address": desc["change_address"]}
        return {"desc": [desc], "summary": summary}

    def _rpc_estimate_tx_size_and_weight(self, params: JsonObject) -> JsonObject:
        """1500 for one input, as FEE assumes; 500 more per further input."""
        n_inputs = param_int(params, "n_inputs")
        if n_inputs < 1 or param_int(params, "n_outputs") < 1:
            raise RpcFault(-1, "Invalid n_inputs/n_outputs")
        weight = 1000 + 500 * n_inputs
        return {"size": weight, "weight": weight}

    def _rpc_get_tx_key(self, params: JsonObject) -> JsonObject:
        """The key of a transaction this wallet's group sent (a stand-in, derived from it)."""
        wallet = self._wallet()
        txid = param_str(params, "txid")
        tx = self.world.txs.get(txid)
        if tx is None or tx.sender != wallet.address:
            raise RpcFault(-8, "No tx secret key is stored for this tx")
        return {"tx_key": digest("tx-key", txid)}

    def _rpc_get_tx_proof(self, params: JsonObject) -> JsonObject:
        """An outgoing proof: needs the tx key, as the real one does."""
        txid, address = param_str(params, "txid"), param_str(params, "address")
        key = self._rpc_get_tx_key({"txid": txid})["tx_key"]
        if not any(to == address for to, _ in self.world.txs[txid].outputs):
            raise RpcFault(-1, "Failed to generate a proof: the address is not a destination")
        return {"signature": "OutProofV2" + digest("proof", txid, address, key)}

    def _make_tx(
        self, wallet: FakeWallet, inputs: list[Owned], outputs: tuple[tuple[str, int], ...]
    ) -> tuple[str, str]:
        """Relay a plain wallet's transaction, or propose a multisig one: (tx_hash, txset)."""
        ids = tuple(o.oid for o in inputs)
        if not wallet.is_multisig:
            txid = self.world._new_txid("tx", wallet.address)
            self.world.txs[txid] = FakeTx(txid, wallet.address, ids, outputs)
            wallet.cache.known_spends.add(txid)
            return txid, ""
        epoch = self.world.epoch(wallet.address)
        proposal = Proposal(
            self.world._new_txid("multisig-tx", wallet.address),
            wallet.address,
            ids,
            outputs,
            epoch,
            unlock_time=self.world.sweep_unlock_time,
            payment_id=self.world.sweep_payment_id,
        )
        txset = self.world._txset(proposal, frozenset({wallet.name}))
        # The hash of the unsigned transaction: never the txid the signed one will have.
        return digest("unsigned", proposal.txid), txset

    # ---- multisig ----

    def _check_multisig_enabled(self, wallet: FakeWallet) -> None:
        if wallet.is_multisig and not wallet.multisig_enabled:
            raise RpcFault(-48, MULTISIG_DISABLED)

    def _ready_wallet(self) -> FakeWallet:
        wallet = self._wallet()
        if not wallet.is_multisig:
            raise RpcFault(-31, "This wallet is not multisig")
        if not wallet.ready:
            raise RpcFault(-31, "This wallet is multisig, but not yet finalized")
        self._check_multisig_enabled(wallet)
        return wallet

    def _rpc_is_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        return {
            "multisig": wallet.is_multisig,
            "ready": wallet.ready,
            "threshold": wallet.threshold,
            "total": len(wallet.group),
        }

    def _rpc_prepare_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if wallet.is_multisig:
            raise RpcFault(-28, "This wallet is already multisig")
        if param_bool(params, "enable_multisig_experimental"):
            wallet.multisig_enabled = True
        return {"multisig_info": self.world._kex_msg(wallet.name, 0)}

    def _rpc_make_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if wallet.is_multisig:
            raise RpcFault(-28, "This wallet is already multisig")
        threshold, password = param_int(params, "threshold"), param_str(params, "password")
        members = {wallet.name}
        for info in param_str_list(params, "multisig_info"):
            msg = self.world._blob(info)
            if not isinstance(msg, KexMsg) or msg.round != 0 or msg.wallet in members:
                raise RpcFault(-1, "Bad, own or repeated multisig info from prepare_multisig")
            members.add(msg.wallet)
        if not 2 <= threshold <= len(members):
            raise RpcFault(-1, f"Invalid threshold {threshold} for {len(members)} signers")
        wallet.group, wallet.threshold, wallet.kex_round = tuple(sorted(members)), threshold, 1
        wallet.password = password  # make_multisig rewrites the keys file with this password
        return {"address": wallet.address, "multisig_info": self.world._kex_msg(wallet.name, 1)}

    def _rpc_exchange_multisig_keys(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if not wallet.is_multisig:
            raise RpcFault(-31, "This wallet is not multisig")
        self._check_multisig_enabled(wallet)
        infos, password = param_str_list(params, "multisig_info"), param_str(params, "password")
        if len(infos) + 1 < len(wallet.group):
            raise RpcFault(-33, "Needs multisig info from more participants")
        fail = "Error calling exchange_multisig_info: "
        if wallet.ready:
            raise RpcFault(-1, fail + "multisig key exchange is already complete")
        senders = set()
        for info in infos:
            msg = self.world._blob(info)
            if (
                not isinstance(msg, KexMsg)
                or msg.round != wallet.kex_round
                or msg.wallet == wallet.name
                or self.world.wallets[msg.wallet].group != wallet.group
            ):
                raise RpcFault(-1, fail + "bad kex message (other group, own or wrong round)")
            senders.add(msg.wallet)
        if senders != set(wallet.group) - {wallet.name}:
            raise RpcFault(-1, fail + "kex messages missing from some signers")
        wallet.kex_round += 1
        wallet.password = password  # the keys file is rewritten again
        if not wallet.ready:
            return {
                "address": "",
                "multisig_info": self.world._kex_msg(wallet.name, wallet.kex_round),
            }
        wallet.address = fake_address(f"multisig:{wallet.threshold}:{','.join(wallet.group)}")
        return {"address": wallet.address, "multisig_info": ""}

    def _rpc_export_multisig_info(self, params: JsonObject) -> JsonObject:
        return {"info": self.world._export(self._ready_wallet())}

    def _rpc_import_multisig_info(self, params: JsonObject) -> JsonObject:
        wallet = self._ready_wallet()
        infos = param_str_list(params, "info")
        if len(infos) + 1 < wallet.threshold:
            raise RpcFault(-33, "Needs multisig export info from more participants")
        fail = "Error calling import_multisig: "
        records: dict[str, ExportInfo] = {}
        for info in infos:
            if not is_hex(info):
                raise RpcFault(-26, "Failed to parse hex.")
            record = self.world._blob(info)
            if not isinstance(record, ExportInfo):
                raise RpcFault(-1, fail + "Bad multisig info file magic in ")
            if record.address != wallet.address:
                raise RpcFault(-1, fail + "Multisig info is for a different account")
            if record.wallet != wallet.name:  # own and repeated infos are ignored, as in wallet2
                records.setdefault(record.wallet, record)
        if not wallet.threshold <= len(records) + 1 <= len(wallet.group):
            raise RpcFault(-1, fail + "Wrong number of multisig sources")
        mined = [o for o in self.world._owned(wallet) if o.confirmations > 0]
        n_outputs = min([len(mined), *(r.n_outputs for r in records.values())])
        covered = {o.oid for o in mined[:n_outputs]}
        wallet.cache.key_images |= covered
        wallet.cache.import_epoch = min(r.epoch for r in records.values())
        # rescan_spent: spends of covered outputs are found even in blocks not yet synced.
        for tx in self.world.txs.values():
            if tx.sender == wallet.address and covered.intersection(tx.inputs):
                wallet.cache.known_spends.add(tx.txid)
        return {"n_outputs": n_outputs}

    def _txset_param(self, params: JsonObject, wallet: FakeWallet) -> TxSet:
        blob = param_str(params, "tx_data_hex")
        if not is_hex(blob):
            raise RpcFault(-26, "Failed to parse hex.")
        txset = self.world._blob(blob)
        if not isinstance(txset, TxSet) or txset.proposal.address != wallet.address:
            raise RpcFault(-34, "Failed to parse multisig tx data.")
        return txset

    def _rpc_sign_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._ready_wallet()
        txset = self._txset_param(params, wallet)
        proposal = txset.proposal
        if wallet.name in txset.signers:
            raise RpcFault(
                -35, "Failed to sign multisig tx: Transaction already signed by this private key"
            )
        if len(txset.signers) >= wallet.threshold:
            raise RpcFault(-35, "Failed to sign multisig tx: Transaction is already fully signed")
        if (
            self.world._stale(wallet)
            or proposal.epoch != self.world.epoch(wallet.address)
            or not set(proposal.inputs) <= wallet.cache.key_images
        ):
            raise RpcFault(-35, STALE)
        signers = txset.signers | {wallet.name}
        result: JsonObject = {"tx_data_hex": self.world._txset(proposal, signers)}
        if len(signers) >= wallet.threshold:
            result["tx_hash_list"] = [proposal.txid]
        return result

    def _rpc_submit_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._ready_wallet()
        txset = self._txset_param(params, wallet)
        if len(txset.signers) < wallet.threshold:
            raise RpcFault(-33, "Not enough signers signed this transaction.")
        proposal = txset.proposal
        if proposal.txid not in self.world.txs:  # the same transaction again is no new spend
            spent = set(proposal.inputs)
            if any(spent.intersection(tx.inputs) for tx in self.world.txs.values()):
                raise RpcFault(-36, "Failed to submit multisig tx: double spend (rejected)")
            self.world.txs[proposal.txid] = FakeTx(
                proposal.txid, proposal.address, proposal.inputs, proposal.outputs
            )
        wallet.cache.known_spends.add(proposal.txid)
        return {"tx_hash_list": [proposal.txid]}
