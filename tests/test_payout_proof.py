"""GET /v1/escrows/{id}/payout/proof: the payout's tx key and proof, kept at submission."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.fakes import call, fake_pool
from tests.test_payout_check import _ready_escrow
from walletd.ids import wallet_file_for


async def test_proof_is_404_before_and_200_after_the_payout(
    tmp_path: Path, autojump_clock: trio.abc.Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before a payout is submitted the proof is 404 not_found; after it, 200 with the txid,
    the destination, the tx key and a proof; the key is in no log line."""
    async with trio.open_nursery() as nursery:
        app, _, payee = await _ready_escrow(nursery, tmp_path, "q1")
        status, body = await call(app, "GET", "/v1/escrows/q1/payout/proof")
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, esc = await call(app, "POST", "/v1/escrows/q1/release", {"address": payee})
        assert status == 202, esc
        status, proof = await call(app, "GET", "/v1/escrows/q1/payout/proof")
        assert status == 200, proof
        assert set(proof) == {"txid", "address", "tx_key", "proof"}
        assert (proof["txid"], proof["address"]) == (esc["payout"]["txid"], payee)
        assert proof["proof"].startswith("OutProofV2")
        assert await app.store.get_payout_proof("q1") is not None  # kept at submission
        nursery.cancel_scope.cancel()
    out = capsys.readouterr()
    assert proof["tx_key"] not in out.out + out.err


async def test_a_proof_not_kept_at_submission_is_made_on_request(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """If walletd stopped (or the wallets failed) between submitting the payout and keeping its
    proof, the endpoint answers 502 wallet_error while the wallets cannot make it, never 500,
    and makes and keeps it once they can."""
    async with trio.open_nursery() as nursery:
        app, _, payee = await _ready_escrow(nursery, tmp_path, "q2")
        pool = fake_pool(app)
        for role in ("arbiter", "vendor"):  # the release's two signers lose the key
            fake = pool.fake_of(wallet_file_for("q2", role))
            fake.fail_next("get_tx_key", -8, "No tx secret key is stored for this tx")
            fake.fail_next("get_tx_key", -8, "No tx secret key is stored for this tx")
        status, esc = await call(app, "POST", "/v1/escrows/q2/release", {"address": payee})
        assert status == 202, esc
        assert await app.store.get_payout_proof("q2") is None
        status, body = await call(app, "GET", "/v1/escrows/q2/payout/proof")
        assert (status, body["error"]["code"]) == (502, "wallet_error"), body
        status, proof = await call(app, "GET", "/v1/escrows/q2/payout/proof")
        assert status == 200, proof
        assert proof["txid"] == esc["payout"]["txid"]
        assert await app.store.get_payout_proof("q2") is not None
        nursery.cancel_scope.cancel()
