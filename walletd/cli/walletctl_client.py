"""walletctl's connection to walletd: a synchronous HTTP client on the Unix socket.

walletd's error answers become `CtlError`s with walletctl's exit codes (1: walletd answered with
an error; 2: walletd could not be reached, or did not answer like walletd), each worded for the
person at the terminal (no socket, a stale one, a permission problem). A call that takes over a
second shows a spinner on a terminal, and nothing in a pipe.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from walletd.jsontypes import JsonObject

__all__ = ["TIMEOUT", "Client", "CtlError"]

TIMEOUT = 100.0  # above walletd's default request_timeout (90 s): walletd times out first


class CtlError(Exception):
    """Stops walletctl with `message` on stderr and `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Client:
    """A synchronous HTTP client on walletd's socket; walletd's errors become `CtlError`s."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=socket_path),
            base_url="http://walletd",  # the host is ignored on a Unix socket
            timeout=TIMEOUT,
        )

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        body: JsonObject | None = None,
        timeout: float = TIMEOUT,
        also_ok: Iterable[int] = (),
        progress: bool = True,
    ) -> Any:
        """The JSON answer; statuses in `also_ok` are answers too unless they carry an error.
        A spinner shows on a terminal if it takes over a second (`progress`: not for long polls)."""
        try:
            with _progress(f"{method} {path}", enabled=progress):
                response = self._http.request(
                    method, path, params=params, json=body, timeout=timeout
                )
        except httpx.ConnectError as exc:
            raise CtlError(self._cannot_connect(exc), 2) from None
        except httpx.TimeoutException:
            raise CtlError(f"walletd at {self.socket_path} did not answer in time", 2) from None
        except httpx.TransportError as exc:
            raise CtlError(f"talking to walletd at {self.socket_path}: {exc}", 2) from None
        try:
            body = response.json()
        except ValueError:
            raise CtlError(
                f"{self.socket_path} answered HTTP {response.status_code} without JSON: "
                "is it walletd's socket?",
                2,
            ) from None
        error = body.get("error") if isinstance(body, dict) else None
        if response.is_success or (response.status_code in also_ok and error is None):
            return body
        if isinstance(error, dict):
            raise CtlError(f"{error.get('code')}: {error.get('message')}", 1)
        raise CtlError(f"HTTP {response.status_code} without an error description", 1)

    def _cannot_connect(self, exc: httpx.ConnectError) -> str:
        where = self.socket_path
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, FileNotFoundError):
            return (
                f"no socket at {where}: is walletd running? "
                "(choose another socket with --socket or $WALLETD_SOCKET)"
            )
        if isinstance(cause, ConnectionRefusedError):
            return f"nothing listens on {where}: walletd is not running (stale socket)"
        if isinstance(cause, PermissionError):
            return f"permission denied on {where}: is this user in walletd's group?"
        return f"cannot connect to walletd at {where}: {cause or exc}"


@contextlib.contextmanager
def _progress(what: str, *, enabled: bool = True, after: float = 1.0) -> Iterator[None]:
    """A spinner on stderr while a call takes more than `after` seconds; only on a terminal, so
    scripts and pipes see nothing."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    done = threading.Event()

    def spin() -> None:
        if done.wait(after):
            return
        frames, i = "|/-\\", 0
        while not done.wait(0.1):
            sys.stderr.write(f"\r{frames[i % 4]} waiting for walletd: {what}")
            sys.stderr.flush()
            i += 1
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
