"""An abandoned creation's wallet files in the cluster database, against a real PostgreSQL.

A creation that fails is undone (its record deleted, its local files set aside); its wallets'
versions saved in the database meanwhile are marked abandoned in the same fenced transaction,
and nothing restores them again: an escrow adopted later under the same id opens its own files.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

from tests.fakes import FakeDaemon, call, fake_config, make_fake_multisig, start
from tests.pgtest import start_cluster
from walletd.app import App, prepare_dirs
from walletd.cluster.db import Connection, Database
from walletd.cluster.wallet_files import REPLACED_DIR
from walletd.config import ClusterConfig
from walletd.ids import ROLES
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool, FakeProcess
from walletd.wallets.process import WalletProcess

pytestmark = pytest.mark.pg

AMOUNT = 10**12


async def _rows(db_url: str, escrow_id: str) -> list[tuple[str, bytes, bool]]:
    """(role, keys, abandoned) of every stored version of the escrow's wallets."""

    def job(conn: Connection) -> list[tuple[str, bytes, bool]]:
        rows = conn.execute(
            "SELECT role, keys, abandoned_at IS NOT NULL FROM wallet_files"
            " WHERE escrow_id = %s ORDER BY role, version",
            (escrow_id,),
        ).fetchall()
        return [(str(r[0]), bytes(r[1]), bool(r[2])) for r in rows]

    db = Database(db_url)
    await db.open()
    try:
        return await db.run(job)
    finally:
        await db.close()


def _failing_creations(app: App, mp: pytest.MonkeyPatch) -> None:
    """Every wallet-rpc the app takes from now on fails its make_multisig: the three wallets
    are created (and stored) first, then the creation is abandoned."""
    pool = app.pool
    assert isinstance(pool, FakePool)
    original = pool.acquire

    async def acquire() -> WalletProcess:
        proc = await original()
        assert isinstance(proc, FakeProcess)
        proc.fake.fail_next("make_multisig", -1, "boom")
        return proc

    mp.setattr(pool, "acquire", acquire)


async def test_an_adoption_reusing_an_abandoned_id_keeps_its_own_files(
    tmp_path: Path, db_url: str
) -> None:
    """A failed creation of e7 leaves its wallets' versions in the database marked abandoned;
    adopting other wallets as e7 afterwards opens them as they are: no abandoned file is
    written over them (nothing kept aside as replaced), and the database's live versions of e7
    are the adopted wallets' files only."""
    world = FakeWalletWorld()
    config = fake_config(tmp_path)
    config = attrs.evolve(
        config, cluster=ClusterConfig(database_url=db_url, host_id="a", lease_ttl=3.0)
    )
    prepare_dirs(config)
    wallet_dir = config.monero.wallet_dir
    world.file_dirs.append(wallet_dir)
    app = App(config, pool=FakePool(world), chain=FakeDaemon(world))
    async with trio.open_nursery() as nursery:
        await start_cluster(nursery, app)
        await start(nursery, app)
        with pytest.MonkeyPatch.context() as mp:
            _failing_creations(app, mp)
            status, body = await call(
                app, "POST", "/v1/escrows", {"escrow_id": "e7", "amount": AMOUNT}
            )
        assert status == 502, body
        abandoned = await _rows(db_url, "e7")
        assert abandoned, "the failed creation stored its wallets in the database"
        assert all(gone for _, _, gone in abandoned), abandoned

        s = await make_fake_multisig(world, "m7")
        for name in s.files.values():
            world.write_files(name)
        adopted: dict[str, bytes] = {
            role: (wallet_dir / f"{s.files[role]}.keys").read_bytes() for role in ROLES
        }
        status, body = await call(app, "POST", "/v1/escrows", s.adopt_body("e7"))
        assert status == 201, body
        await call(app, "GET", "/v1/escrows/e7/balance")  # its session is open
        assert not (wallet_dir / REPLACED_DIR).exists(), "adopted files were replaced"
        for role in ROLES:
            assert (wallet_dir / f"{s.files[role]}.keys").read_bytes() == adopted[role]
        live = [(role, keys) for role, keys, gone in await _rows(db_url, "e7") if not gone]
        assert {role for role, _ in live} == set(ROLES)
        assert all(keys == adopted[role] for role, keys in live), live
        nursery.cancel_scope.cancel()
