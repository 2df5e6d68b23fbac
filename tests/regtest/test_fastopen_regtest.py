"""Fast wallet opens against real wallets: walletd's children with and without the preload.

Every other regtest test runs with fast opens on (the default). These two check what the health
says and that the wallets are the same wallets either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.regtest.walletd_proc import WalletdProcess
from walletd.ids import ROLES
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import MultisigSet, MultisigSetFactory
from walletd.wallets import fastopen

pytestmark = pytest.mark.regtest
PASSWORD = "regtest-pw"


def _adopt_body(escrow_id: str, s: MultisigSet) -> dict[str, Any]:
    return {
        "escrow_id": escrow_id,
        "amount": 10**12,
        "wallets": {r: {"file": s.files[r], "password": s.password} for r in ROLES},
    }


def _preloaded(pid: int) -> bool:
    return str(fastopen.LIBRARY) in Path(f"/proc/{pid}/maps").read_text()


async def test_fast_open_off_by_config(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """`monero.fast_open = false`: health says off and why, no child maps the library, and
    adoption and a balance read work as before."""
    daemon = WalletdProcess(tmp_path / "w", monerod.daemon_address, monero={"fast_open": False})
    (s,) = await make_multisig_sets.acreate(daemon.wallet_dir, 1, PASSWORD)
    with daemon, trio.fail_after(180):
        async with daemon.client() as client:
            health = (await client.get("/v1/health")).json()
            assert health["fast_open"] is False
            assert health["fast_open_reason"] == "monero.fast_open = false"
            r = await client.post("/v1/escrows", json=_adopt_body("off1", s))
            assert r.status_code == 201, r.text
            assert r.json()["multisig_address"] == s.address
            r = await client.get("/v1/escrows/off1/balance")
            assert r.status_code == 200, r.text
            children = daemon.children()
            assert len(children) >= 3
            assert not any(_preloaded(pid) for pid in children)
        assert '"event": "fast wallet opens off"' in daemon.log_text()
    assert not (daemon.state_dir / fastopen.KEY_NAME).exists()


@pytest.mark.skipif(not fastopen.LIBRARY.is_file(), reason="library not built (scripts/setup.sh)")
async def test_fast_open_on_opens_the_same_wallets(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """By default health says on, every child maps the library, and wallets made by a plain
    wallet-rpc open there with the same multisig address and a readable balance."""
    daemon = WalletdProcess(tmp_path / "w", monerod.daemon_address)
    (s,) = await make_multisig_sets.acreate(daemon.wallet_dir, 1, PASSWORD)
    with daemon, trio.fail_after(180):
        async with daemon.client() as client:
            health = (await client.get("/v1/health")).json()
            assert health["fast_open"] is True
            assert "fast_open_reason" not in health
            r = await client.post("/v1/escrows", json=_adopt_body("on1", s))
            assert r.status_code == 201, r.text
            assert r.json()["multisig_address"] == s.address
            r = await client.get("/v1/escrows/on1/balance")
            assert r.status_code == 200, r.text
            children = daemon.children()
            assert len(children) >= 3
            assert all(_preloaded(pid) for pid in children)
        assert '"event": "fast wallet opens on"' in daemon.log_text()
    key = daemon.state_dir / fastopen.KEY_NAME
    assert key.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in daemon.log_text()
