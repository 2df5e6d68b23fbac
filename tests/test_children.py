"""walletd's own monero-wallet-rpc children and the external endpoint pool, with real processes.

wallet-rpc starts and answers `get_version` without a reachable daemon, so these tests point it at
an unused loopback port. Every test bounds itself with `trio.fail_after` and stops what it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import trio

from walletd.errors import Capacity, ChildStartError, RpcAuthError, RpcError, RpcUnreachable
from walletd.wallets import children, spawning
from walletd.wallets.child_control import STORE_TIMEOUT
from walletd.wallets.children import ChildPool, ChildSettings, PoolStatistics
from walletd.wallets.endpoints import Endpoint, EndpointPool
from walletd.wallets.orphans import remove_orphans
from walletd.wallets.process import WalletProcess
from walletd.wallets.rpc import WalletRpc
from walletd.wallets.spawning import wallet_rpc_argv

WALLET_RPC = "monero-wallet-rpc"
REPO = Path(__file__).resolve().parents[1]


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _settings(tmp_path: Path, **overrides: Any) -> ChildSettings:
    wallet_dir = tmp_path / "wallets"
    wallet_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "wallet_rpc_path": WALLET_RPC,
        "wallet_dir": wallet_dir,
        "daemon_address": f"127.0.0.1:{_unused_port()}",
        "run_dir": tmp_path / "run",
        "spares": 1,
        "start_timeout": 15.0,
        "stop_timeout": 3.0,
    }
    values.update(overrides)
    return ChildSettings(**values)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw.rsplit(b")", 1)[-1].decode().split()


def _proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _running(pid: int) -> bool:
    """The pid exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _start_time(pid: int) -> int:
    stat = _stat(pid)
    assert stat is not None
    return int(stat[19])


def _our_wallet_rpc_children(wallet_dir: Path) -> list[int]:
    """Live monero-wallet-rpc processes of this test process serving `wallet_dir` (the regtest
    fixtures of the same pytest run have children of their own, on other directories)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat and stat[0] != "Z" and int(stat[1]) == os.getpid():
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                    if os.readlink(f"/proc/{entry.name}/exe").endswith(WALLET_RPC) and (
                        str(wallet_dir).encode() in argv
                    ):
                        pids.append(int(entry.name))
    return pids


def _login(settings: ChildSettings, proc: WalletProcess) -> tuple[str, str]:
    port = proc.ident.rsplit(":", 1)[1]
    text = (settings.run_dir / f"child-{port}.conf").read_text().strip()
    user, password = text.removeprefix("rpc-login=").split(":", 1)
    return user, password


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while True:
            if condition():
                return
            await trio.sleep(0.02)


@contextlib.asynccontextmanager
async def _running_pool(settings: ChildSettings) -> AsyncIterator[ChildPool]:
    pool = ChildPool(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        try:
            yield pool
        finally:
            nursery.cancel_scope.cancel()


def test_argv_follows_the_rules(tmp_path: Path) -> None:
    """The command line is loopback-only, DNS-free, SSL-free and carries no credentials."""
    s = _settings(tmp_path, daemon_address="127.0.0.1:18081")
    argv = wallet_rpc_argv(s, 4242, s.run_dir / "child-4242.conf", s.run_dir / "logs/w.log")
    assert argv == [
        WALLET_RPC,
        "--wallet-dir", str(s.wallet_dir),
        "--rpc-bind-ip", "127.0.0.1",
        "--rpc-bind-port", "4242",
        "--daemon-address", "127.0.0.1:18081",
        "--trusted-daemon",
        "--non-interactive",
        "--no-dns",
        "--shared-ringdb-dir", str(s.run_dir / "ringdb"),
        "--rpc-ssl", "disabled",
        "--daemon-ssl", "disabled",
        "--log-file", str(s.run_dir / "logs/w.log"),
        "--max-log-file-size", "5000000",
        "--max-log-files", "1",
        "--config-file", str(s.run_dir / "child-4242.conf"),
    ]  # fmt: skip


async def test_child_answers_only_its_own_credentials(tmp_path: Path) -> None:
    """A child answers get_version through its digest credentials; wrong ones get RpcAuthError."""
    with trio.fail_after(30):
        async with _running_pool(_settings(tmp_path)) as pool:
            proc = await pool.acquire()
            assert proc.alive()
            assert not proc.external
            assert proc.start_seconds is not None
            version = await proc.rpc.call("get_version")
            assert int(version["version"]) > 0
            wrong = WalletRpc(proc.rpc.base_url, user="walletd", password="wrong", timeout=5.0)
            try:
                with pytest.raises(RpcAuthError):
                    await wrong.call("get_version")
            finally:
                await wrong.aclose()
            await pool.release(proc)


async def test_credentials_stay_out_of_cmdline_and_environment(tmp_path: Path) -> None:
    """The secret lives only in a 0600 config file, deleted when the child stops."""
    s = _settings(tmp_path)
    with trio.fail_after(30):
        async with _running_pool(s) as pool:
            proc = await pool.acquire()
            assert proc.pid is not None
            port = proc.ident.rsplit(":", 1)[1]
            conf = s.run_dir / f"child-{port}.conf"
            record = s.run_dir / "children" / f"{proc.pid}.json"
            assert conf.stat().st_mode & 0o777 == 0o600
            assert s.run_dir.stat().st_mode & 0o777 == 0o700
            _user, password = _login(s, proc)
            assert len(password) >= 32
            cmdline = _proc_file(proc.pid, "cmdline")
            assert password.encode() not in cmdline
            assert b"--config-file" in cmdline
            environ = _proc_file(proc.pid, "environ").split(b"\0")
            assert password.encode() not in b"".join(environ)
            assert b"DNS_PUBLIC=tcp://127.0.0.1" in environ
            assert {e.split(b"=", 1)[0] for e in environ if e} == {
                b"PATH",
                b"HOME",
                b"LANG",
                b"DNS_PUBLIC",
            }
            assert os.readlink(f"/proc/{proc.pid}/cwd") == str(s.run_dir)
            assert password not in repr(proc) + repr(proc.rpc)
            assert json.loads(record.read_text())["pid"] == proc.pid
            assert record.stat().st_mode & 0o777 == 0o600
            # A second child gets different credentials.
            other = await pool.acquire()
            assert _login(s, other)[1] != password
            await pool.discard(proc)
            assert proc.exited.is_set()
            assert not conf.exists()
            assert not record.exists()
            await pool.release(other)


async def test_spares_are_kept_ready(tmp_path: Path) -> None:
    """A warm pool hands out a ready spare and starts a replacement; extra releases retire.
    Its statistics say how many processes are idle and handed out at each step."""
    with trio.fail_after(30):
        async with _running_pool(_settings(tmp_path, spares=2)) as pool:
            assert len(pool.idle) == 2
            assert pool.statistics() == PoolStatistics(idle=2, busy=0, restarts=0)
            ready = {p.pid for p in pool.idle}
            proc = await pool.acquire()
            assert proc.pid in ready  # no start was waited for
            assert proc.uses == 1
            assert len(pool.idle) == 1
            assert pool.statistics() == PoolStatistics(idle=1, busy=1, restarts=0)
            await _until(lambda: len(pool.idle) == 2)
            assert proc not in pool.idle
            assert pool.statistics() == PoolStatistics(idle=2, busy=1, restarts=0)
            # The pool already has its spares: the released process is stopped, not kept.
            await pool.release(proc)
            assert proc.exited.is_set()
            assert proc.returncode == 0
            assert len(pool.idle) == 2
            assert pool.statistics() == PoolStatistics(idle=2, busy=0, restarts=0)


async def test_a_daemon_switch_restarts_children_against_the_new_daemon(tmp_path: Path) -> None:
    """After `set_daemon_address` the idle spare is stopped and replaced by a child started with
    the new --daemon-address; a busy child is retired when released, never reused."""
    new_daemon = f"127.0.0.1:{_unused_port()}"
    with trio.fail_after(60):
        async with _running_pool(_settings(tmp_path, spares=1)) as pool:
            busy = await pool.acquire()
            await _until(lambda: len(pool.idle) == 1, timeout=30)
            (old_spare,) = pool.idle
            pool.set_daemon_address(new_daemon)
            await pool.release(busy)  # room for a spare, but it uses the old daemon
            assert busy.exited.is_set()
            await _until(lambda: old_spare.exited.is_set(), timeout=30)
            await _until(lambda: len(pool.idle) == 1, timeout=30)
            (spare,) = pool.idle
            assert spare.pid is not None
            argv = _proc_file(spare.pid, "cmdline").split(b"\0")
            assert argv[argv.index(b"--daemon-address") + 1] == new_daemon.encode()
            proc = await pool.acquire()
            assert proc.daemon_address == new_daemon
            await pool.release(proc)


async def test_release_keeps_a_process_until_max_uses(tmp_path: Path) -> None:
    """A released process is reused as a spare until it has served max_uses wallets."""
    with trio.fail_after(30):
        async with _running_pool(_settings(tmp_path, spares=1, max_uses=2)) as pool:
            first = await pool.acquire()
            await pool.release(first)  # the replacement is still starting: room for a spare
            assert pool.idle == (first,)
            again = await pool.acquire()
            assert again is first
            assert again.uses == 2
            await pool.release(again)
            assert again.exited.is_set()  # retired: close_wallet gives no memory back
            with pytest.raises(ValueError, match="not held"):
                await pool.release(again)


async def test_killed_child_is_noticed_and_replaced(tmp_path: Path) -> None:
    """kill -9 sets `exited`; a dead spare is replaced, a dead busy one is counted on discard."""
    with trio.fail_after(30):
        async with _running_pool(_settings(tmp_path, spares=1)) as pool:
            (victim,) = pool.idle
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            await victim.exited.wait()
            assert victim.returncode == -signal.SIGKILL
            await _until(lambda: len(pool.idle) == 1 and pool.idle[0] is not victim)
            assert pool.statistics().restarts == 1

            busy = await pool.acquire()
            assert busy.pid is not None
            os.kill(busy.pid, signal.SIGKILL)
            await busy.exited.wait()
            assert not busy.alive()
            with pytest.raises(RpcUnreachable):
                await busy.rpc.call("get_version", timeout=2.0)
            await pool.discard(busy)
            assert pool.statistics().restarts == 2
            await _until(lambda: len(pool.idle) == 1)


async def test_cancelled_pool_leaves_no_process(tmp_path: Path) -> None:
    """Cancelling the pool's run stops every child, busy, idle or still starting."""
    s = _settings(tmp_path, spares=2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pool = ChildPool(s)
            await nursery.start(pool.run)
            held = await pool.acquire()
            await _until(lambda: len(pool.idle) == 2)
            pids = pool.pids
            assert len(pids) == 3
            assert all(_running(pid) for pid in pids)
            nursery.cancel_scope.cancel()
        assert held.exited.is_set()
        assert not any(_running(pid) for pid in pids)
        assert not list((s.run_dir / "children").iterdir())
        assert not list(s.run_dir.glob("child-*.conf"))

        # Cancelled while its children are still starting (before they answer).
        async with trio.open_nursery() as nursery:
            pool = ChildPool(s)
            nursery.start_soon(pool.run)
            await _until(lambda: len(pool.pids) == 2)
            starting = pool.pids
            nursery.cancel_scope.cancel()
        assert not any(_running(pid) for pid in starting)
        assert _our_wallet_rpc_children(s.wallet_dir) == []


def _start_outside(argv: list[str], run_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=run_dir,
        env={"PATH": os.environ["PATH"], "HOME": str(run_dir), "DNS_PUBLIC": "tcp://127.0.0.1"},
    )


def _write_record(settings: ChildSettings, pid: int, port: int) -> Path:
    record = settings.run_dir / "children" / f"{pid}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"pid": pid, "port": port, "start_time": _start_time(pid)}))
    return record


async def test_remove_orphans_stops_only_orphaned_wallet_rpc(tmp_path: Path) -> None:
    """Orphans found by record or by wallet dir are stopped; an unrelated pid is never signalled."""
    s = _settings(tmp_path)
    elsewhere = _settings(tmp_path / "other")
    started: list[subprocess.Popen[bytes]] = []
    try:
        for cfg in (s, elsewhere):
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            (cfg.run_dir / "c.conf").write_text("rpc-login=u:p\n")
        # Found by its record only (it serves another wallet dir).
        by_record = _start_outside(
            wallet_rpc_argv(
                elsewhere, _unused_port(), elsewhere.run_dir / "c.conf", tmp_path / "a.log"
            ),
            elsewhere.run_dir,
        )
        started.append(by_record)
        _write_record(s, by_record.pid, 1)
        # No record: found by the /proc scan (serves our wallet dir).
        by_scan = _start_outside(
            wallet_rpc_argv(s, _unused_port(), s.run_dir / "c.conf", tmp_path / "b.log"),
            s.run_dir,
        )
        started.append(by_scan)
        # Unrelated process whose pid (and start time) sit in a record.
        sleeper = _start_outside(["sleep", "30"], s.run_dir)
        started.append(sleeper)
        sleeper_record = _write_record(s, sleeper.pid, 2)
        stale_conf = s.run_dir / "child-1234.conf"
        stale_conf.write_text("rpc-login=old:secret\n")

        with trio.fail_after(s.stop_timeout + 10):
            stopped = await trio.to_thread.run_sync(remove_orphans, s)
        assert stopped == 2
        assert by_record.poll() is not None
        assert by_scan.poll() is not None
        assert sleeper.poll() is None  # untouched
        assert not sleeper_record.exists()
        assert not list((s.run_dir / "children").iterdir())
        assert not stale_conf.exists()
        # Nothing left: a second pass finds nothing.
        with trio.fail_after(10):
            assert await trio.to_thread.run_sync(remove_orphans, s) == 0
    finally:
        for popen in started:
            if popen.poll() is None:
                popen.kill()
            popen.wait()


async def test_hung_child_is_killed_within_bounds(tmp_path: Path) -> None:
    """A SIGSTOPped child is still stopped (SIGKILL) within store + stop_timeout + a little."""
    s = _settings(tmp_path, spares=1, stop_timeout=1.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            pool = ChildPool(s)
            await nursery.start(pool.run)
            busy = await pool.acquire()
            assert busy.pid is not None
            os.kill(busy.pid, signal.SIGSTOP)
            started = trio.current_time()
            await pool.discard(busy)  # store (times out), SIGTERM (pending), SIGKILL
            assert trio.current_time() - started < STORE_TIMEOUT + s.stop_timeout + 1.0
            assert busy.returncode == -signal.SIGKILL
            assert pool.statistics().restarts == 0  # hung, not dead

            # An idle hung spare at shutdown: no store, SIGTERM, then SIGKILL.
            await _until(lambda: len(pool.idle) == 1)
            (spare,) = pool.idle
            assert spare.pid is not None
            os.kill(spare.pid, signal.SIGSTOP)
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - started < s.stop_timeout + 1.0
        assert spare.returncode == -signal.SIGKILL


async def test_start_failure_reports_the_output(tmp_path: Path) -> None:
    """A binary that exits at once is retried, then reported with its last output lines."""
    fake = tmp_path / "fake-wallet-rpc"
    fake.write_text("#!/bin/sh\necho 'Failed to bind: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    s = _settings(tmp_path, wallet_rpc_path=str(fake))
    with trio.fail_after(10):
        with pytest.raises(ChildStartError) as info:
            await ChildPool(s).run()  # fails before it reports started
        assert "boom" in info.value.detail
        assert "code 3" in info.value.detail
        assert not list((s.run_dir / "children").iterdir())
        assert not list(s.run_dir.glob("child-*.conf"))

        missing = _settings(tmp_path, wallet_rpc_path=str(tmp_path / "no-such-binary"))
        with pytest.raises(ChildStartError, match="cannot run"):
            await ChildPool(missing).run()


async def test_failed_replacement_is_retried_after_a_backoff(tmp_path: Path) -> None:
    """A spare that cannot be replaced for a while is retried until a start succeeds."""
    refuse = tmp_path / "refuse"
    wrapper = tmp_path / "wallet-rpc-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\n[ -e {refuse} ] && {{ echo refused; exit 3; }}\nexec {WALLET_RPC} "$@"\n'
    )
    wrapper.chmod(0o755)
    with trio.fail_after(30):
        async with _running_pool(_settings(tmp_path, wallet_rpc_path=str(wrapper))) as pool:
            (victim,) = pool.idle
            assert victim.pid is not None
            refuse.touch()
            os.kill(victim.pid, signal.SIGKILL)
            await victim.exited.wait()
            await trio.sleep(0.3)  # the replacement fails START_ATTEMPTS times and backs off
            assert pool.idle == ()
            refuse.unlink()
            await _until(lambda: len(pool.idle) == 1)
            assert pool.statistics().restarts == 1


CHILD_OF_WALLETD = """
import sys, trio
from pathlib import Path
from walletd.wallets.children import ChildPool, ChildSettings

async def main() -> None:
    pool = ChildPool(ChildSettings("monero-wallet-rpc", Path(sys.argv[1]), sys.argv[2],
                                   Path(sys.argv[3]), spares=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        print(*pool.pids, file=sys.stderr, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_children_die_with_walletd(tmp_path: Path) -> None:
    """kill -9 of walletd makes its children exit (PR_SET_PDEATHSIG)."""
    s = _settings(tmp_path)
    argv = [sys.executable, "-c", CHILD_OF_WALLETD]
    argv += [str(s.wallet_dir), s.daemon_address, str(s.run_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child_pid: int | None = None
    walletd = await trio.lowlevel.open_process(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    try:
        with trio.fail_after(20):
            assert walletd.stderr is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await walletd.stderr.receive_some(100)
                assert chunk, "walletd exited early"
                line += chunk
            child_pid = int(line.split()[0])
            assert _running(child_pid)
            walletd.kill()
            await walletd.wait()
            await _until(lambda: not _running(child_pid), timeout=5.0)
    finally:
        if walletd.returncode is None:
            walletd.kill()
            with trio.move_on_after(5) as cs:
                cs.shield = True
                await walletd.wait()
        if child_pid is not None and _running(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        if walletd.stderr is not None:
            await walletd.stderr.aclose()


async def test_endpoint_pool_hands_out_each_endpoint_once(tmp_path: Path) -> None:
    """Each endpoint goes to one owner until released; a discarded one returns only if clean."""
    s = _settings(tmp_path)
    with trio.fail_after(30):
        async with _running_pool(s) as children:
            child = await children.acquire()
            user, password = _login(s, child)
            real = Endpoint(child.rpc.base_url, user, password)
            assert password not in repr(real)
            dead = Endpoint(f"http://127.0.0.1:{_unused_port()}", "u", "p")
            pool = EndpointPool(
                [real, dead],
                call_timeout=5.0,
                acquire_timeout=0.2,
                close_timeout=1.0,
                retry_interval=60.0,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                assert pool.capacity == 2
                a = await pool.acquire()
                b = await pool.acquire()
                assert a is not b
                assert a.external
                assert a.pid is None
                assert {a.ident, b.ident} == {
                    child.ident,
                    f"wallet-rpc:127.0.0.1:{dead.url.rsplit(':', 1)[1]}",
                }
                with pytest.raises(Capacity):
                    await pool.acquire()
                assert pool.statistics() == PoolStatistics(idle=0, busy=2, restarts=0)
                await pool.release(a)
                assert pool.statistics() == PoolStatistics(idle=1, busy=1, restarts=0)
                again = await pool.acquire()
                assert again is a
                assert again.uses == 2
                # Discarded: the reachable one (no wallet open) comes back, the other stays out.
                await pool.discard(a)
                await pool.discard(b)
                back = await pool.acquire()
                assert back.ident == child.ident
                with pytest.raises(Capacity):
                    await pool.acquire()
                await pool.release(back)
                with pytest.raises(ValueError, match="not held"):
                    await pool.release(back)
                assert pool.statistics().restarts == 0
                nursery.cancel_scope.cancel()
            await children.release(child)


# A process that is not wallet-rpc listening on loopback and answering every JSON-RPC call
# without asking for credentials; it writes each method it receives to argv[1], one a line.
FOREIGN_LISTENER = """
import http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with open(sys.argv[1], "a") as seen:
            seen.write(body["method"] + "\\n")
        out = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {"version": 65562}})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.asynccontextmanager
async def _foreign_listener(seen: Path) -> AsyncIterator[tuple[int, int]]:
    """(port, pid) of a foreign JSON-RPC listener in another process; stopped at the end."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", FOREIGN_LISTENER, str(seen)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(10):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(100)
                assert chunk, "the foreign listener exited early"
                line += chunk
        yield int(line), proc.pid
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()


async def test_listener_ownership_is_read_from_proc(tmp_path: Path) -> None:
    """The check that a loopback port is served by a given pid says yes for the process that
    listens there and no for any other pid, and no for a port nobody listens on."""
    with trio.fail_after(20):
        async with _foreign_listener(tmp_path / "seen") as (port, pid):
            assert await trio.to_thread.run_sync(spawning.listener_is_owned_by, port, pid)
            assert not await trio.to_thread.run_sync(
                spawning.listener_is_owned_by, port, os.getpid()
            )
        assert not await trio.to_thread.run_sync(
            spawning.listener_is_owned_by, _unused_port(), os.getpid()
        )


async def test_foreign_listener_on_a_childs_port_never_gets_a_wallet_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process that took the port a child was told to use answers get_version without
    auth: the pool does not take it for the child, discards that child and starts another, so
    open_wallet (with the wallet password) never goes to the foreign process."""
    seen = tmp_path / "seen"
    with trio.fail_after(60):
        async with _foreign_listener(seen) as (taken, _):
            ports = [taken]
            real_free_port = spawning.free_port
            monkeypatch.setattr(
                spawning, "free_port", lambda live: ports.pop() if ports else real_free_port(live)
            )
            async with _running_pool(_settings(tmp_path)) as pool:
                proc = await pool.acquire()
                assert proc.ident != f"wallet-rpc:127.0.0.1:{taken}"
                with contextlib.suppress(RpcError):
                    await proc.rpc.call("open_wallet", {"filename": "w", "password": "hunter2"})
                await pool.discard(proc)
        assert "open_wallet" not in seen.read_text()


def _log_ports(logs: Path) -> set[str]:
    """The ports that have wallet-rpc log files (current or rotated) in `logs`."""
    return {p.name.split("-")[2].split(".")[0] for p in logs.glob("wallet-rpc-*.log*")}


async def test_wallet_rpc_logs_stay_bounded(tmp_path: Path) -> None:
    """Logs of children that are gone are pruned to the newest few, at start and whenever a
    child exits; each child's log is capped in size and rotated files (argv)."""
    s = _settings(tmp_path)
    logs = s.run_dir / "logs"
    logs.mkdir(parents=True)

    def leave_stale(first: int, count: int) -> None:
        for i in range(count):  # ports no child holds; older ones first
            for name in (f"wallet-rpc-{first + i}.log", f"wallet-rpc-{first + i}.log-2020-01-01"):
                (logs / name).write_text("old\n")
                os.utime(logs / name, (1_600_000_000 + i, 1_600_000_000 + i))

    leave_stale(1000, 3 * spawning.KEEP_EXITED_LOGS)
    with trio.fail_after(60):
        async with _running_pool(s) as pool:
            stale = _log_ports(logs) - {p.ident.rsplit(":", 1)[1] for p in pool.idle}
            assert len(stale) <= spawning.KEEP_EXITED_LOGS
            assert str(1000 + 3 * spawning.KEEP_EXITED_LOGS - 1) in stale  # the newest stay
            leave_stale(2000, 3 * spawning.KEEP_EXITED_LOGS)
            proc = await pool.acquire()
            await pool.discard(proc)
            live = {p.ident.rsplit(":", 1)[1] for p in pool.idle}
            assert len(_log_ports(logs) - live) <= spawning.KEEP_EXITED_LOGS
    argv = wallet_rpc_argv(s, 4242, s.run_dir / "c.conf", logs / "w.log")
    assert argv[argv.index("--max-log-file-size") + 1] == str(spawning.LOG_FILE_MAX_BYTES)
    assert argv[argv.index("--max-log-files") + 1] == str(spawning.LOG_FILES_ROTATED)


async def test_a_child_whose_port_was_taken_after_it_died_is_not_ours(tmp_path: Path) -> None:
    """The check before a wallet password is sent: a child holding its port is ours; once it
    has died (killed, not yet reaped) and another process bound that port, it is not."""
    with trio.fail_after(60):
        async with _running_pool(_settings(tmp_path)) as pool:
            proc = await pool.acquire()
            assert await proc.still_ours()
            port = int(proc.ident.rsplit(":", 1)[1])
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as thief:
                thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                while True:  # the dead child's socket closes a moment after SIGKILL
                    try:
                        thief.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        await trio.sleep(0.05)
                thief.listen()
                assert not await proc.still_ours()
            await pool.discard(proc)


async def test_log_lines_name_an_escrow_only_while_its_wallet_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare started because escrow A's session took a process is no escrow's: its lines carry
    no escrow_id (trio copies the starting task's context, A's, into the spare's supervisor).
    A process is named with an escrow (and role) only while it holds that escrow's wallet:
    its crash then says whose wallet was in it; after the wallet is closed, nothing does."""
    monkeypatch.setattr(children, "log", structlog.get_logger(children.__name__))
    with (
        structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs,
        trio.fail_after(60),
    ):
        async with _running_pool(_settings(tmp_path, spares=1)) as pool:
            taken: list[WalletProcess] = []

            async def session_of_a() -> None:  # a task of its own, as a session is
                structlog.contextvars.bind_contextvars(escrow_id="escrow-a")
                taken.append(await pool.acquire())  # starts a replacement spare from here

            async with trio.open_nursery() as nursery:
                nursery.start_soon(session_of_a)
            (held,) = taken
            assert held.pid is not None
            await _until(lambda: len(pool.idle) == 1 and pool.idle[0] is not held)
            (spare,) = pool.idle
            assert spare.pid is not None
            held.wallet_of = ("escrow-a", "buyer")  # as the session sets it once open_wallet ok
            for proc, pid in ((held, held.pid), (spare, spare.pid)):
                os.kill(pid, signal.SIGKILL)
                await proc.exited.wait()
            await pool.discard(held)
            await _until(lambda: len(pool.idle) == 1 and pool.idle[0] is not spare)

    def lines(event: str, pid: int | None) -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e["event"] == event and e.get("pid") == pid]

    (spare_started,) = lines("wallet-rpc started", spare.pid)
    assert "escrow_id" not in spare_started
    (spare_died,) = lines("wallet-rpc exited unexpectedly", spare.pid)
    assert "escrow_id" not in spare_died
    (held_died,) = lines("wallet-rpc exited unexpectedly", held.pid)
    assert (held_died["escrow_id"], held_died["role"]) == ("escrow-a", "buyer")
    assert held.wallet_of is None  # discarded: it holds nothing of escrow-a any more
