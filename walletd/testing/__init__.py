"""Test doubles for walletd, public on purpose (as `trio.testing` is): the marketplace's own
tests and walletd's benchmark use them too, and they ship in the wheel.

- `fake_wallet_rpc`: a fake monero-wallet-rpc that keeps the semantics that matter (one wallet
  and one call per process, the keys lock, error codes, multisig rules), for fast tests; its
  public face, re-exporting `fake_chain` (the shared chain and wallet directory), `fake_spending`
  (transfer, sweep and multisig rules), `fake_rpc_wire` (params, faults) and `fake_transport`.
- `fake_pool`, `fake_multisig`: a process pool of fakes; ready-made multisig sets.
- `fake_monerod`: a fake monerod over the fake chain that can be stopped, hung, stuck or behind.
- `regtest`: a private `monerod --regtest` (also what `walletd dev` runs).
- `wallet_rpc_process`: monero-wallet-rpc processes of our own beside it: plain wallets, a miner,
  a private chain, ready 2-of-3 multisig sets.
- `walletd_process`: walletd as a real process, for tests and the bench.

May import anything of walletd; nothing in walletd but the CLI's dev sandbox imports it.
"""
