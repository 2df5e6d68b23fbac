"""Ready 2-of-3 multisig wallets in a fake world, made with the real recipe (wallets.multisig)."""

from __future__ import annotations

from walletd.ids import ROLES, Role
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_transport import FakeTransport
from walletd.testing.fake_wallet_rpc import FakeWalletRpc
from walletd.wallets import multisig
from walletd.wallets.rpc import WalletRpc

__all__ = ["make_fake_multisig_files"]


async def make_fake_multisig_files(
    world: FakeWalletWorld, prefix: str, password: str
) -> tuple[dict[Role, str], str]:
    """Three wallets `<prefix>-<role>` made one 2-of-3 multisig, then closed; returns their
    file names and the multisig address."""
    fakes = {r: FakeWalletRpc(world, open_delay=0, create_delay=0) for r in ROLES}
    rpcs = {
        r: WalletRpc(f.url, user="u", password="p", transport=FakeTransport(f))
        for r, f in fakes.items()
    }
    names = {r: f"{prefix}-{r}" for r in ROLES}
    await multisig.create_wallets(rpcs, names, dict.fromkeys(ROLES, password))
    address = await multisig.make_multisig(rpcs, dict.fromkeys(ROLES, password))
    for rpc in rpcs.values():
        await rpc.call("close_wallet")
        await rpc.aclose()
    for fake in fakes.values():
        fake.terminate()
    return names, address
