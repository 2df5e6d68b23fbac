"""Test doubles for walletd: a fake monero-wallet-rpc (`walletd.testing.fake_wallet_rpc`)."""
