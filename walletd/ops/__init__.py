"""What operators see and tests steer: logs, metrics, systemd notifications, failpoints.

Imports nothing of walletd's layers: every layer may use it.
"""
