"""walletd: owns the wallets of 2-of-3 multisig Monero escrows, serves them over a Unix socket."""

__version__ = "0.1.0"
