"""The session registry and its sessions (the actor tree's middle).

- `registry`: a supervisor of escrow sessions with a cap, LRU eviction and an idle TTL
  (`entry`: its record of one session; `limits`: its limits and figures).
- `session`: one supervised trio task per escrow owning its three wallet-rpc handles.
- `handles`: those three handles: how they open, prove their identity and close.
- `messages`: the frozen messages a session serves, and their replies.
- `slots`: who asks for a session (`Caller`), and the queue of callers waiting for a slot.

May import wallets, state and ops; knows escrows only as ids and wallet specs, never the API.
"""
