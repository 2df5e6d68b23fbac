"""The command line: `walletd` (the daemon), `walletctl` (a client of the socket), and
`walletd dev` (a private regtest sandbox). The top of the tree: may import anything.
"""
