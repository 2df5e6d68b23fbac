"""A private, throw-away PostgreSQL for the cluster figure, as scripts/test-postgres.sh starts one.

Debian's server binaries (`initdb`, `pg_ctl`, under /usr/lib/postgresql/<major>/bin unless on
PATH) in a temporary directory, on a free loopback port, fsync off (a benchmark database has
nothing to keep). initdb refuses to run as root, so as root they run as the package's `postgres`
user, which then owns the directory. Stopped (`-m immediate`) and removed on exit, also on
failure. The shell version stays for scripts/test.sh: the bench is Python and must clean up from
its own ExitStack.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

__all__ = ["PrivatePostgres", "server_bin"]

START_TIMEOUT = 60


def server_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        candidate = Path(found).resolve().parent
    else:
        # Debian puts the server binaries under /usr/lib/postgresql/<major>/bin, not on PATH.
        majors = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
        )
        if not majors:
            return None
        candidate = majors[-1]
    return candidate if (candidate / "pg_ctl").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """`with PrivatePostgres(bin_dir) as pg:` a running server; `pg.url` reaches its `postgres`
    database as the superuser `walletd` (trust auth, loopback only). Never log the URL."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir: Path | None = None
        self.url = ""
        self._started = False
        self._options = ""

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            code = subprocess.run(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, check=False
            ).returncode
        if code != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{Path(argv[-1]).name if argv else '?'} failed ({code}): {tail}")

    def start(self) -> PrivatePostgres:
        self.dir = Path(tempfile.mkdtemp(prefix="walletd-bench-pg."))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        port = _free_port()
        self._run(
            self._as_owner(
                str(self.bin / "initdb"),
                *("-D", str(data), "-U", "walletd", "--auth=trust", "-E", "UTF8"),
                "--no-instructions",
            ),
            self.dir / "initdb.log",
        )
        # Loopback TCP only, the Unix socket inside the temporary directory, fsync off.
        self._options = f"-h 127.0.0.1 -p {port} -k {self.dir} -F"
        self._started = True
        self.resume()
        self.url = f"postgresql://walletd@127.0.0.1:{port}/postgres"
        return self

    def resume(self) -> None:
        """Start the server (again, after `halt`: same directory, same port)."""
        assert self.dir is not None, "start() first"
        self._run(
            self._as_owner(
                str(self.bin / "pg_ctl"),
                *("-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"), "-w"),
                *("-t", str(START_TIMEOUT), "-o", self._options, "start"),
            ),
            self.dir / "pg_ctl.log",
        )

    def halt(self) -> None:
        """Stop the server as a crash would (`-m immediate`), keeping its data for `resume`."""
        assert self.dir is not None, "start() first"
        self._run(
            self._as_owner(
                str(self.bin / "pg_ctl"),
                *("-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"),
            ),
            self.dir / "pg_ctl.log",
        )

    def pids(self) -> list[int]:
        """The postmaster's pid (first line of postmaster.pid), or [] once it is gone."""
        if self.dir is None:
            return []
        try:
            return [int((self.dir / "data" / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def stop(self) -> None:
        if self.dir is None:
            return
        if self._started:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    self._as_owner(
                        str(self.bin / "pg_ctl"),
                        *("-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"),
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    timeout=60,
                    check=False,
                )
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self._started = False

    def __enter__(self) -> PrivatePostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
