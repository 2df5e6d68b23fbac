"""How many samples each figure gets: the default run (~15 min) and `--quick` (~5 min)."""

from __future__ import annotations

import attrs

__all__ = ["Plan"]


@attrs.frozen
class Plan:
    quick: bool
    cheap: int  # calls of ~1 ms: warm balance through walletd, bare get_balance
    daemon_calls: int  # calls that ask the daemon (~44 ms): get_transfer_by_txid
    old_way: int  # open, refresh, call, close on wallet-rpc (~2 s each)
    rounds: int  # the figures of one item are measured interleaved, in this many rounds
    opens: int  # session opens, and opens of one wallet alone
    three_every: int  # the three-opens baseline (~3x one open) on every n-th open sample
    releases: int  # funded escrows consumed by each of walletd and the old way
    sessions: int  # warm sessions for the load, memory and monitor figures
    load_seconds: float  # one measured window
    load_rounds: int  # windows per backend and level: 1 (fake, real) or 2 (fake, real, real, fake)
    load_warmup: float
    idle_cycles: int  # monitor cycles without a new block
    block_cycles: int  # monitor cycles after one new block each
    escrows: int  # registered escrows for the memory figure
    creations: int  # escrows created through walletd (three wallets and a multisig each)
    cluster_clients: tuple[int, ...]  # concurrent clients for the cluster's read figures
    failovers: int  # kill -9 of the owner host, one escrow each

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 50, 20, 5, 1, 3, 1, 2, 10, 2.0, 1, 0.5, 10, 3, 1000, 2, (10,), 2)
        return cls(False, 200, 100, 20, 4, 20, 2, 5, 10, 4.0, 2, 1.0, 30, 10, 1000, 5, (10, 50), 3)
