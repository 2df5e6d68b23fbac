"""What operators see and tests steer: logs, metrics, systemd notifications, failpoints.

- `logs`: structured JSON (or terminal) logging with secrets masked.
- `metrics`: the Prometheus registry and the figures walletd exports on `/metrics`.
- `notify`: systemd's sd_notify (ready, reloading, stopping, watchdog) without libsystemd.
- `preflight`: the start-up checks `--check-config` shares with start-up (paths, permissions).
- `failpoints`: named places where a test makes walletd die as if by kill -9.

Imports nothing of walletd's layers: every layer may use it.
"""
