"""What is done to one wallet-rpc child the pool started: read its output, wait until it is
ready, reap its exit, and stop it with escalation (store, SIGTERM, SIGKILL).

The pool (`children.ChildPool`) decides when; these say how, each bounded. A child is signalled
only until it is reaped, so its pid cannot have been reused by then (`send_signal`).
"""

from __future__ import annotations

import os
import signal

import structlog
import trio

from walletd.errors import RpcAuthError, RpcError
from walletd.wallets.process import WalletProcess, managed
from walletd.wallets.spawning import ChildSettings

__all__ = [
    "KILL_WAIT",
    "STORE_TIMEOUT",
    "drain",
    "send_signal",
    "terminate",
    "wait_exit",
    "wait_ready",
]

# The pool's logger: these lines keep the logger name they had before the split.
log = structlog.get_logger("walletd.wallets.children")

STORE_TIMEOUT = 2.0  # `store` before SIGTERM when a wallet may be open
KILL_WAIT = 5.0  # after SIGKILL the kernel reaps at once; bounded anyway
READY_POLL_INTERVAL = 0.05
READY_CALL_TIMEOUT = 2.0
MAX_LINE = 400  # characters of one output line that reach the log


async def wait_ready(proc: WalletProcess, settings: ChildSettings) -> str | None:
    """None once `get_version` answers with our credentials, else why it never did."""
    with trio.move_on_after(settings.start_timeout):
        while True:
            if proc.exited.is_set():
                return f"exited with code {proc.returncode} before it was ready"
            try:
                await proc.rpc.call("get_version", timeout=READY_CALL_TIMEOUT)
            except RpcAuthError:
                # Someone else answers on that port: ours will fail to bind and exit.
                with trio.move_on_after(settings.stop_timeout):
                    await proc.exited.wait()
                if proc.exited.is_set():
                    return f"port taken, exited with code {proc.returncode}"
                return "another process answers on its port (HTTP 401)"
            except RpcError:
                pass  # not listening yet (or busy): poll again
            else:
                return None
            with trio.move_on_after(READY_POLL_INTERVAL):
                await proc.exited.wait()
    return f"not ready within {settings.start_timeout:g} s"


async def drain(proc: WalletProcess) -> None:
    """Read the child's stdout+stderr to the end, logging each line (bounded) at debug."""
    child = managed(proc)
    pending = b""
    try:
        while chunk := await child.output.receive_some(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _output_line(proc, line)
            if len(pending) > MAX_LINE * 4:  # no newline for a long time: log what we have
                _output_line(proc, pending)
                pending = b""
        if pending:
            _output_line(proc, pending)
    except (trio.ClosedResourceError, OSError) as exc:
        # The pipe closes when the child exits or is stopped: nothing left to drain.
        log.debug(
            "wallet-rpc output closed",
            pid=proc.pid,
            reason=type(exc).__name__,
            **proc.labels(),
        )
    finally:
        child.drained.set()


def _output_line(proc: WalletProcess, raw: bytes) -> None:
    line = raw.decode("utf-8", "replace").rstrip()[:MAX_LINE]
    if line:
        managed(proc).tail.append(line)
        log.debug("wallet-rpc output", pid=proc.pid, line=line, **proc.labels())


async def wait_exit(proc: WalletProcess) -> None:
    """Wait for the child to exit, reap it and set `exited` (one waiter at a time)."""
    child = managed(proc)
    if proc.exited.is_set():
        return
    if child.pidfd is not None:
        await trio.lowlevel.wait_readable(child.pidfd)
    while True:  # the pidfd said it exited; poll() reaps it (or we poll without a pidfd)
        code = child.popen.poll()
        if code is not None:
            break
        await trio.sleep(0.05)
    proc.returncode = code
    if child.pidfd is not None:
        os.close(child.pidfd)
        child.pidfd = None
    child.died = not child.stopping
    proc.exited.set()


async def terminate(
    proc: WalletProcess, *, stop_timeout: float, store: bool, reap: bool, kill: bool = False
) -> None:
    """`store` if asked, SIGTERM, wait `stop_timeout`, SIGKILL, wait; no-op once exited.
    `kill`: SIGKILL at once."""
    child = managed(proc)
    child.stopping = True
    if proc.exited.is_set():
        return

    async def wait() -> None:
        if reap:
            await wait_exit(proc)
        else:
            await proc.exited.wait()

    if store:
        try:
            await proc.rpc.call("store", timeout=STORE_TIMEOUT)
        except (RpcError, OSError) as exc:
            log.debug("store before stop failed", pid=proc.pid, error=str(exc), **proc.labels())
    if not kill:
        send_signal(proc, signal.SIGTERM)
        with trio.move_on_after(stop_timeout):
            await wait()
        if proc.exited.is_set():
            return
        log.warning(
            "wallet-rpc ignored SIGTERM; sending SIGKILL",
            ident=proc.ident,
            pid=proc.pid,
            **proc.labels(),
        )
    send_signal(proc, signal.SIGKILL)
    await wait()


def send_signal(proc: WalletProcess, sig: signal.Signals) -> None:
    """Signal a child that has not been reaped yet (so its pid cannot have been reused)."""
    child = managed(proc)
    if proc.exited.is_set() or child.popen.returncode is not None:
        return
    try:
        if child.pidfd is not None:
            signal.pidfd_send_signal(child.pidfd, sig)
        else:
            child.popen.send_signal(sig)
    except ProcessLookupError:
        pass  # it exited between our check and the signal: what we wanted anyway
