"""`walletd dev`: a private regtest monerod, a funded faucet wallet, and walletd against them.

One command gives the marketplace server's developers the whole escrow flow on one machine:
create an escrow, pay it from the faucet, mine blocks, release or refund. Two dev-only endpoints
are added to the API (never present in a normal `walletd --config` run):

- `POST /v1/dev/mine {"blocks": N}` -> `{"height": H}`: mine N blocks (to the faucet), answered
  once the monitor has checked the escrows at the new height (so their state is current).
- `POST /v1/dev/pay {"escrow_id": ID, "amount": N}` or `{"address": A, "amount": N}` ->
  `{"txid": T}`: pay from the faucet wallet.
- `POST /v1/dev/wallet {}` -> `{"buyer": {"address", "balance", "unlocked_balance"},
  "vendor": {...}}`: two plain regtest wallets made at start-up, payout addresses for a refund
  and a release, with their balances now.

The banner and the README's walkthrough are the same commands (`walkthrough`, checked by
tests/test_dev.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import structlog
import trio

from walletd.api.messages import Request, Response
from walletd.api.routes import parse_json_object
from walletd.app import App, prepare_dirs
from walletd.config import Config, DaemonConfig, LogConfig, MoneroConfig, MonitorConfig
from walletd.errors import InvalidRequest, NotFound, RpcCallError, StateDirBusy, Unavailable
from walletd.escrows.payouts import check_address_format
from walletd.ids import check_escrow_id
from walletd.jsontypes import JsonObject
from walletd.ops.logs import configure_logging
from walletd.state.statelock import StateLock
from walletd.testing.regtest import Monerod, start_monerod
from walletd.wallets.process import WalletProcess

__all__ = ["Faucet", "dev_config", "run_dev"]

log = structlog.get_logger(__name__)

FAUCET_WALLET = "dev-faucet"
FAUCET_PASSWORD = "dev-faucet"  # noqa: S105 - a throwaway regtest wallet, by design
# Coinbase outputs unlock after 60 blocks: mine past that so the faucet can pay at once.
FIRST_BLOCKS = 80
# Ready payout addresses: plain wallets of their own, in the faucet's wallet-rpc process.
PAYOUT_WALLETS = {"buyer": "dev-buyer", "vendor": "dev-vendor"}
PAYOUT_PASSWORD = "dev-payout"  # noqa: S105 - throwaway regtest wallets, by design
# A payment is in the next block; the escrow is ready once it has the required confirmations
# (which is also when regtest unlocks it: 10 blocks); a payout completes with as many more.
CONFIRMATIONS = 10
BLOCKS_TO_READY = 1 + CONFIRMATIONS
BLOCKS_TO_COMPLETE = CONFIRMATIONS


def dev_config(root: Path, daemon_address: str, socket_path: Path, log_format: str) -> Config:
    """The sandbox's config: everything under `root`, a fast monitor for a regtest chain."""
    return Config(
        daemon=DaemonConfig(socket_path=socket_path, state_dir=root / "state"),
        monero=MoneroConfig(daemon_address=daemon_address, wallet_dir=root / "wallets"),
        monitor=MonitorConfig(
            poll_interval=5.0,
            cold_interval=5.0,
            height_check=0.5,
            required_confirmations=CONFIRMATIONS,
        ),
        log=LogConfig(level="info", format=log_format),
    )


class Faucet:
    """A plain wallet with mined coins, in a wallet-rpc process of its own."""

    def __init__(self, app: App, monerod: Monerod) -> None:
        self.app = app
        self.monerod = monerod
        self.proc: WalletProcess | None = None
        self.address: str | None = None
        self.payout_addresses: dict[str, str] = {}  # role -> address of its payout wallet
        self._lock = trio.Lock()

    async def _open(self, name: str, password: str) -> str:
        """Open (or create) the plain wallet `name` in the faucet's process; its address."""
        assert self.proc is not None
        rpc = self.proc.rpc
        params = {"filename": name, "password": password}
        try:
            await rpc.call("open_wallet", params)
        except RpcCallError:
            await rpc.call("create_wallet", {**params, "language": "English"})
        return str((await rpc.call("get_address"))["address"])

    async def start(self) -> None:
        self.proc = await self.app.pool.acquire()
        rpc = self.proc.rpc
        for role, name in PAYOUT_WALLETS.items():
            self.payout_addresses[role] = await self._open(name, PAYOUT_PASSWORD)
        self.address = await self._open(FAUCET_WALLET, FAUCET_PASSWORD)
        if await self.monerod.rpc.height() < FIRST_BLOCKS:
            await self.monerod.rpc.generate_blocks(FIRST_BLOCKS, self.address)
        await rpc.call("refresh")
        log.info("dev faucet ready", address=self.address)

    async def mine(self, request: Request, _: dict[str, str]) -> Response:
        body = parse_json_object(request.body)
        blocks = body.get("blocks", 1)
        if set(body) - {"blocks"} or not isinstance(blocks, int) or not 1 <= blocks <= 1000:
            raise InvalidRequest('body must be {"blocks": 1..1000}')
        if self.address is None:
            raise Unavailable("the faucet is still starting")
        await self.monerod.rpc.generate_blocks(blocks, self.address)
        height = await self.monerod.rpc.height()
        # Answer once the monitor has checked the escrows at this height, so a walkthrough's
        # next command sees `ready` or `completed` instead of racing the monitor.
        with trio.move_on_after(60):
            await self.app.monitor.wait_cycled(height)
        return Response.json(200, {"height": height})

    async def wallets(self, request: Request, _: dict[str, str]) -> Response:
        if request.body.strip() and parse_json_object(request.body):
            raise InvalidRequest("body must be {} (or empty)")
        if self.proc is None:
            raise Unavailable("the faucet is still starting")
        answer: JsonObject = {}
        async with self._lock:  # the faucet's process holds one wallet at a time
            rpc = self.proc.rpc
            try:
                for role, name in PAYOUT_WALLETS.items():
                    await self._open(name, PAYOUT_PASSWORD)
                    await rpc.call("refresh")
                    balance = await rpc.call("get_balance")
                    answer[role] = {
                        "address": self.payout_addresses[role],
                        "balance": balance["balance"],
                        "unlocked_balance": balance["unlocked_balance"],
                    }
            finally:
                await self._open(FAUCET_WALLET, FAUCET_PASSWORD)
        return Response.json(200, answer)

    async def pay(self, request: Request, _: dict[str, str]) -> Response:
        body = parse_json_object(request.body)
        if set(body) - {"escrow_id", "address", "amount"} or "amount" not in body:
            raise InvalidRequest('body must be {"escrow_id" or "address", "amount"}')
        amount = body["amount"]
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise InvalidRequest("amount must be a positive integer (atomic units)")
        if "escrow_id" in body:
            rec = await self.app.store.get_escrow(check_escrow_id(body["escrow_id"]))
            if rec is None or rec.multisig_address is None:
                raise NotFound("no such escrow")
            address = rec.multisig_address
        elif isinstance(body.get("address"), str):
            address = check_address_format(body["address"])
        else:
            raise InvalidRequest("give escrow_id or address")
        if self.proc is None:
            raise Unavailable("the faucet is still starting")
        async with self._lock:  # one wallet-rpc call at a time, and no double spend of outputs
            rpc = self.proc.rpc
            await rpc.call("refresh")
            result = await rpc.call(
                "transfer", {"destinations": [{"amount": amount, "address": address}]}
            )
        return Response.json(200, {"txid": result.get("tx_hash"), "fee": result.get("fee")})


def run_dev(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket_path: Path = (args.socket or root / "walletd.sock").resolve()
    fmt = args.log_format or ("console" if sys.stderr.isatty() else "json")
    configure_logging("info", fmt)
    state_dir = root / "state"  # as in dev_config
    state_dir.mkdir(mode=0o700, exist_ok=True)
    try:
        lock = StateLock.acquire(
            state_dir
        )  # one walletd per state dir: see walletd.state.statelock
    except StateDirBusy as exc:
        print(f"walletd dev: {exc}", file=sys.stderr)
        return 2
    with lock:
        trio.run(_dev_main, root, socket_path, fmt)
    return 0


async def _dev_main(root: Path, socket_path: Path, fmt: str) -> None:
    async with trio.open_nursery() as nursery:
        monerod: Monerod = await nursery.start(start_monerod, root / "monerod")
        config = dev_config(root, monerod.daemon_address, socket_path, fmt)
        prepare_dirs(config)
        app = App(config)
        faucet = Faucet(app, monerod)
        app.api.add_route(r"/v1/dev/mine", POST=faucet.mine)
        app.api.add_route(r"/v1/dev/pay", POST=faucet.pay)
        app.api.add_route(r"/v1/dev/wallet", POST=faucet.wallets)
        await nursery.start(app.run)
        await faucet.start()
        print(_banner(socket_path, monerod, faucet.payout_addresses), file=sys.stderr, flush=True)
        await app.stopped.wait()
        nursery.cancel_scope.cancel()


def walkthrough(socket_path: str, walletctl: str) -> list[str]:
    """The escrow flow as shell commands, as the banner prints them and the README shows them
    (the README with the default socket and `.venv/bin/walletctl`)."""
    c = "curl -s --unix-socket $S http://walletd"
    vendor = (
        f"VENDOR=$({c}/v1/dev/wallet -d '{{}}' | "
        'python3 -c \'import json, sys; print(json.load(sys.stdin)["vendor"]["address"])\')'
    )
    return [
        f"S={socket_path}",
        f"{c}/v1/dev/wallet -d '{{}}'        # ready-made buyer and vendor payout addresses",
        f'{c}/v1/escrows -d \'{{"escrow_id": "demo1", "amount": 1000000000000}}\'',
        f'{c}/v1/dev/pay -d \'{{"escrow_id": "demo1", "amount": 1000000000000}}\'',
        f"{c}/v1/dev/mine -d '{{\"blocks\": {BLOCKS_TO_READY}}}'     # funded, then ready",
        vendor,
        f'{c}/v1/escrows/demo1/release -d "{{\\"address\\": \\"$VENDOR\\"}}"',
        f"{c}/v1/dev/mine -d '{{\"blocks\": {BLOCKS_TO_COMPLETE}}}'     # completed",
        f"{c}/v1/dev/wallet -d '{{}}'        # the vendor has the amount less the fee",
        f"{walletctl} --socket $S events        # every step, as walletctl shows it",
    ]


def _banner(socket_path: Path, monerod: Monerod, payout: dict[str, str]) -> str:
    beside = Path(sys.executable).parent / "walletctl"  # the one installed with this walletd
    walletctl = str(beside) if beside.is_file() else "walletctl"
    lines: list[str] = [
        "",
        f"walletd dev sandbox ready: socket {socket_path}, regtest monerod {monerod.rpc_url}",
        f"payout addresses: buyer  {payout['buyer']}",
        f"                  vendor {payout['vendor']}",
        f"walletctl: {walletctl} --socket {socket_path} status",
        "the escrow flow (as in the README):",
        *(f"  {line}" for line in walkthrough(str(socket_path), walletctl)),
        "stop with Ctrl-C",
    ]
    return "\n".join(lines)
