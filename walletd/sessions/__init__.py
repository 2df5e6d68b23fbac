"""The session registry and its sessions (the actor tree's middle).

- `registry`: a supervisor of escrow sessions with a cap, LRU eviction and an idle TTL
  (`entry`: its record of one session; `limits`: its limits and figures).
- `session`: one supervised trio task per escrow owning its three wallet-rpc handles.
- `handles`: those three handles (`WalletHandles`, owned by the session): how they open, prove
  their identity and close.
- `reader`: the reads of what the escrow holds and has seen, through its reader wallet.
- `mailbox`: how callers reach a session (`SessionHandle`) and how it answers them.
- `messages`: the frozen messages a session serves, and their replies.
- `warm_payout`: a payout prepared on a multisig info exchange made ahead of it.
- `leased`: a session that runs only while this host holds its escrow's lease (a cluster).
- `slots`: who asks for a session (`Caller`), and the queue of callers waiting for a slot.

May import wallets, state and ops; knows escrows only as ids and wallet specs, never the API,
and the cluster only through `state.ownership.Ownership` and the errors of `walletd.errors`.
"""
