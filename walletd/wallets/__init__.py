"""The wallet processes and how to talk to them.

- `children`: the supervised pool of monero-wallet-rpc children (`spawning`: how one is started;
  `child_control`: reading, reaping and stopping one); `process`: one process as its owner
  holds it; `orphans`: what a dead walletd left; `endpoints`: a fixed list of external
  wallet-rpc processes instead; `failover`: which of several monerod walletd uses now.
- `fastopen`: the LD_PRELOAD library that spares the children an RSA-4096 key per wallet open.
- `rpc`, `transport`: JSON-RPC clients of wallet-rpc and monerod over a lean keep-alive transport.
- `chain`: the `Chain` protocol, what walletd asks monerod (`rpc.DaemonRpc`, or a test fake).
- `multisig`: the 2-of-3 recipes (setup, sync, propose, co-sign, submit) on three wallets;
  `payout_check`: a proposal is checked against the recorded payout before it is signed.
- `repair`: what to do when a wallet does not open (only proven damage is repaired);
  `keys_lock`: who holds a wallet's keys-file lock.

May import state (backups) and ops; knows nothing of escrows, sessions or the API.
"""
