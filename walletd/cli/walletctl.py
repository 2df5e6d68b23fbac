"""walletctl: look at and steer a running walletd over its Unix socket.

Output is aligned tables for people, or with --json walletd's own JSON for scripts. Exit status:
0 done; 1 walletd answered with an error (printed as `walletctl: CODE: MESSAGE`), or `status` found
walletd degraded; 2 walletd could not be reached, or the command line is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx
import shtab

from walletd import __version__
from walletd.errors import InvalidRequest
from walletd.ids import check_escrow_id
from walletd.jsontypes import JsonObject

__all__ = ["CtlError", "main", "table"]

DEFAULT_SOCKET = "/run/walletd/walletd.sock"
ATOMIC_PER_XMR = 10**12
_TIMEOUT = 100.0  # above walletd's default request_timeout (90 s): walletd times out first
_POLL_S = 30  # long poll of --follow; walletd allows up to 60
_EVENT_KEYS = ("seq", "at", "type", "escrow_id")
_EVENT_WIDTHS = (6, 24, 18, 36)  # so the lines of --follow align across answers
# Event fields that are atomic units: shown in XMR (--json keeps walletd's integers).
_AMOUNT_KEYS = frozenset({"amount", "fee", "balance", "unlocked_balance", "previous_balance"})


class CtlError(Exception):
    """Stops walletctl with `message` on stderr and `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- talking to walletd --------------------------------------------------------------------------


class Client:
    """A synchronous HTTP client on walletd's socket; walletd's errors become `CtlError`s."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=socket_path),
            base_url="http://walletd",  # the host is ignored on a Unix socket
            timeout=_TIMEOUT,
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
        timeout: float = _TIMEOUT,
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


# ---- formatting ----------------------------------------------------------------------------------


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Iterable[int] = (),
    min_widths: Sequence[int] = (),
    header: bool = True,
) -> str:
    """Rows as text columns two spaces apart; columns in `right` are right-aligned (numbers)."""
    lines = [list(headers)] if header else []
    body = [list(r) for r in rows]
    widths = [
        max([len(h), *(len(r[i]) for r in body), *min_widths[i : i + 1]])
        for i, h in enumerate(headers)
    ]
    right = set(right)
    lines += body
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in lines
    )


def _pairs(items: Iterable[tuple[str, str]]) -> str:
    """Key-value lines with the values aligned."""
    return table(("", ""), items, header=False)


def _xmr(atomic: object) -> str:
    """Atomic units as XMR with all 12 decimals, computed exactly (no float)."""
    if not isinstance(atomic, int):
        return _text(atomic)
    sign, atomic = ("-", -atomic) if atomic < 0 else ("", atomic)
    whole, frac = divmod(atomic, ATOMIC_PER_XMR)
    return f"{sign}{whole}.{frac:012d}"


def _atomic(xmr: str) -> int:
    """An XMR amount typed by a person ("1.5") as atomic units, exactly; argparse type."""
    try:
        value = Decimal(xmr) * ATOMIC_PER_XMR
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an XMR amount: {xmr!r}") from None
    if not value.is_finite() or value <= 0 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a positive XMR amount (12 decimals at most): {xmr}")
    return int(value)


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return _text(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


class _Fields:
    """Takes fields out of a JSON object; `rest()` lists those nobody took.

    A newer walletd may add fields: they are shown as they come rather than hidden."""

    def __init__(self, obj: JsonObject) -> None:
        self._rest = dict(obj)

    def __call__(self, key: str) -> Any:
        return self._rest.pop(key, None)

    def rest(self) -> list[tuple[str, str]]:
        return [(k.replace("_", " "), _text(v)) for k, v in self._rest.items()]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


# ---- commands ------------------------------------------------------------------------------------


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    health = client.call("GET", "/v1/health", also_ok=(503,))  # 503: degraded, still an answer
    stats = client.call("GET", "/v1/stats")
    if args.json:
        _print_json({"health": health, "stats": stats})
    else:
        h, s = _Fields(health), _Fields(stats)
        items = [("status", _text(h("status")))]
        if "reason" in health:
            items.append(("reason", _text(h("reason"))))
        h("active_sessions")  # the same number as in stats
        items += [
            ("version", _text(h("version"))),
            ("daemon height", _text(h("daemon_height"))),
            ("escrows", _text(h("escrows"))),
            (
                "sessions",
                f"{_text(s('active_sessions'))} of {_text(s('max_sessions'))} "
                f"({round(100 * float(s('utilization') or 0))}%)",
            ),
            ("average session age", _duration(s("avg_age_s"))),
            ("oldest session", _duration(s("oldest_age_s"))),
            ("opened / closed", f"{_text(s('opened'))} / {_text(s('closed'))}"),
            ("evicted / expired", f"{_text(s('evicted'))} / {_text(s('expired'))}"),
            ("hits / misses", f"{_text(s('hits'))} / {_text(s('misses'))}"),
            ("wallet-rpc restarts", _text(s("wallet_rpc_restarts"))),
        ]
        print(_pairs(items + h.rest() + s.rest()))
    return 0 if health.get("status") == "ok" else 1


def cmd_sessions(client: Client, args: argparse.Namespace) -> int:
    body = client.call("GET", "/v1/sessions")
    if args.json:
        _print_json(body)
        return 0
    sessions = body["sessions"]
    if not sessions:
        print("no open sessions")
        return 0
    rows = [
        (
            s["escrow_id"],
            _duration(s.get("age_s")),
            _duration(s.get("idle_s")),
            _text(s.get("busy")),
        )
        for s in sessions
    ]
    print(table(("ESCROW", "AGE", "IDLE", "BUSY"), rows, right=(1, 2)))
    return 0


def cmd_escrow_show(client: Client, args: argparse.Namespace) -> int:
    escrow = client.call("GET", f"/v1/escrows/{quote(args.id, safe='')}")
    if args.json:
        _print_json(escrow)
        return 0
    e = _Fields(escrow)
    funding = e("funding") or {}
    items = [
        ("escrow", _text(e("escrow_id"))),
        ("state", _text(e("state"))),
        ("address", _text(e("multisig_address"))),
        ("amount", f"{_xmr(e('amount'))} XMR"),
        ("balance", f"{_xmr(funding.get('balance'))} XMR"),
        ("unlocked", f"{_xmr(funding.get('unlocked_balance'))} XMR"),
        (
            "confirmations",
            f"{_text(funding.get('confirmations'))} of {_text(e('required_confirmations'))}",
        ),
        ("checked at", _text(funding.get("checked_at"))),
    ]
    payout = e("payout")
    if payout:
        items += [
            ("payout", _text(payout.get("kind"))),
            ("payout address", _text(payout.get("address"))),
            ("payout txid", _text(payout.get("txid"))),
            ("payout confirmations", _text(payout.get("confirmations"))),
            ("payout submitted at", _text(payout.get("submitted_at"))),
        ]
    else:
        items.append(("payout", "-"))
    session = e("session") or {}
    opened = "closed"
    if session.get("open"):
        opened = (
            f"open for {_duration(session.get('age_s'))}, idle {_duration(session.get('idle_s'))}"
        )
    items += [
        ("session", opened),
        ("created at", _text(e("created_at"))),
        ("updated at", _text(e("updated_at"))),
    ]
    print(_pairs(items + e.rest()))
    return 0


def _escrow_path(escrow_id: str, tail: str = "") -> str:
    return f"/v1/escrows/{quote(escrow_id, safe='')}{tail}"


def cmd_escrow_create(client: Client, args: argparse.Namespace) -> int:
    body: JsonObject = {"escrow_id": args.id, "amount": args.amount}
    if args.confirmations is not None:
        body["required_confirmations"] = args.confirmations
    client.call("POST", "/v1/escrows", body=body)
    return cmd_escrow_show(client, args)


def _payout(kind: str) -> Callable[[Client, argparse.Namespace], int]:
    def run(client: Client, args: argparse.Namespace) -> int:
        client.call("POST", _escrow_path(args.id, f"/{kind}"), body={"address": args.address})
        return cmd_escrow_show(client, args)

    return run


def cmd_escrow_balance(client: Client, args: argparse.Namespace) -> int:
    params: dict[str, str | int] = {"refresh": "true"} if args.refresh else {}
    body = client.call("GET", _escrow_path(args.id, "/balance"), params=params)
    if args.json:
        _print_json(body)
        return 0
    b = _Fields(body)
    items = [
        ("balance", f"{_xmr(b('balance'))} XMR"),
        ("unlocked", f"{_xmr(b('unlocked_balance'))} XMR"),
        ("blocks to unlock", _text(b("blocks_to_unlock"))),
        ("height", _text(b("height"))),
    ]
    print(_pairs(items + b.rest()))
    return 0


def cmd_escrow_transfer(client: Client, args: argparse.Namespace) -> int:
    path = _escrow_path(args.id, f"/transfers/{quote(args.txid, safe='')}")
    body = client.call("GET", path)
    if args.json:
        _print_json(body)
        return 0
    t = _Fields(body)
    items = [
        ("txid", _text(t("txid"))),
        ("direction", _text(t("direction"))),
        ("amount", f"{_xmr(t('amount'))} XMR"),
        ("height", _text(t("height"))),
        ("confirmations", _text(t("confirmations"))),
        ("in pool", _text(t("in_pool"))),
    ]
    print(_pairs(items + t.rest()))
    return 0


def cmd_escrow_list(client: Client, args: argparse.Namespace) -> int:
    params: dict[str, str | int] = {} if args.state is None else {"state": args.state}
    body = client.call("GET", "/v1/escrows", params=params)
    if args.json:
        _print_json(body)
        return 0
    escrows = body["escrows"]
    if not escrows:
        print("no escrows" if args.state is None else f"no escrows in state {args.state}")
        return 0
    rows = []
    for e in escrows:
        funding = e.get("funding") or {}
        rows.append(
            (
                e["escrow_id"],
                _text(e.get("state")),
                _xmr(e.get("amount")),
                _xmr(funding.get("balance")),
                f"{_text(funding.get('confirmations'))}/{_text(e.get('required_confirmations'))}",
                "open" if (e.get("session") or {}).get("open") else "-",
                _text(e.get("updated_at")),
            )
        )
    headers = ("ESCROW", "STATE", "AMOUNT XMR", "BALANCE XMR", "CONF", "SESSION", "UPDATED")
    print(table(headers, rows, right=(2, 3, 4)))
    return 0


def cmd_session_open(client: Client, args: argparse.Namespace) -> int:
    body = client.call("POST", f"/v1/escrows/{quote(args.id, safe='')}/session")
    if args.json:
        _print_json(body)
    elif body.get("created"):
        print(f"session {args.id} opened in {float(body.get('open_s') or 0):.1f}s")
    else:
        print(f"session {args.id} was already open")
    return 0


def cmd_session_close(client: Client, args: argparse.Namespace) -> int:
    body = client.call("DELETE", f"/v1/escrows/{quote(args.id, safe='')}/session")
    if args.json:
        _print_json(body)
    else:
        print(f"session {args.id} {'closed' if body.get('closed') else 'was not open'}")
    return 0


def _detail(key: str, value: object) -> str:
    if key in _AMOUNT_KEYS and isinstance(value, int):
        return f"{key}={_xmr(value)}XMR"
    return f"{key}={_text(value)}"


def _event_row(event: JsonObject) -> list[str]:
    details = " ".join(_detail(k, v) for k, v in event.items() if k not in _EVENT_KEYS)
    return [*(_text(event.get(k)) for k in _EVENT_KEYS), details]


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    after: int = args.after
    if not args.follow:
        # Every page after `after` (walletd answers a bounded page per call), as one answer.
        events: list[JsonObject] = []
        while True:
            body = client.call("GET", "/v1/events", params={"after": after, "timeout": 0})
            if not body["events"]:
                break
            events += body["events"]
            after = body["next"]
        if args.json:
            _print_json({"events": events, "next": after})
        elif events:
            headers = ("SEQ", "AT", "TYPE", "ESCROW", "DETAILS")
            print(table(headers, map(_event_row, events), right=(0,)))
        else:
            print("no events")
        return 0
    header = not args.json
    try:
        while True:
            body = client.call(
                "GET",
                "/v1/events",
                params={"after": after, "timeout": _POLL_S},
                timeout=_POLL_S + 15,
                progress=False,
            )
            for event in body["events"]:
                if args.json:
                    print(json.dumps(event))  # one event per line: easy to stream into jq
                else:
                    headers = ("SEQ", "AT", "TYPE", "ESCROW", "DETAILS")
                    row = table(
                        headers,
                        [_event_row(event)],
                        right=(0,),
                        min_widths=_EVENT_WIDTHS,
                        header=header,
                    )
                    print(row)
                    header = False
            sys.stdout.flush()  # a pipe would otherwise hold the events back
            after = body["next"]
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how --follow ends


# ---- command line --------------------------------------------------------------------------------


def _escrow_id(value: str) -> str:
    try:
        return check_escrow_id(value)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _common(*, top: bool) -> argparse.ArgumentParser:
    """--socket and --json, accepted before or after the command (sub-levels do not reset them)."""
    p = argparse.ArgumentParser(add_help=False)
    default_socket = os.environ.get("WALLETD_SOCKET") or DEFAULT_SOCKET
    p.add_argument(
        "--socket",
        metavar="PATH",
        default=default_socket if top else argparse.SUPPRESS,
        help=f"walletd's socket (default {default_socket}; $WALLETD_SOCKET sets another)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print walletd's JSON instead of tables (--follow: one event per line)",
    )
    return p


def _parser() -> argparse.ArgumentParser:
    common = _common(top=False)
    p = argparse.ArgumentParser(
        prog="walletctl",
        description=__doc__,
        parents=[_common(top=True)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # e.g. `walletctl --print-completion bash > /etc/bash_completion.d/walletctl`
    shtab.add_argument_to(p, ["--print-completion"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        fn: Callable[[Client, argparse.Namespace], int],
        help_: str,
    ) -> argparse.ArgumentParser:
        cp: argparse.ArgumentParser = parent.add_parser(
            name, parents=[common], help=help_, description=help_
        )
        cp.set_defaults(fn=fn)
        return cp

    command(sub, "status", cmd_status, "health and session statistics (exit 1 if degraded)")
    command(sub, "sessions", cmd_sessions, "open sessions, most recently used first")

    escrow = sub.add_parser("escrow", help="create, pay out or look at escrows").add_subparsers(
        dest="escrow_command", required=True, metavar="ACTION"
    )
    command(escrow, "show", cmd_escrow_show, "one escrow in detail").add_argument(
        "id", type=_escrow_id, metavar="ID"
    )
    command(escrow, "list", cmd_escrow_list, "all escrows, or those in one state").add_argument(
        "--state", metavar="S", help="awaiting_funding, funded, ready, releasing, ..."
    )

    create = command(escrow, "create", cmd_escrow_create, "create an escrow's three wallets")
    create.add_argument("id", type=_escrow_id, metavar="ID")
    create.add_argument("amount", type=_atomic, metavar="XMR", help="amount in XMR, e.g. 1.5")
    create.add_argument(
        "--confirmations", type=int, metavar="K", help="confirmations required (default: config)"
    )
    for kind, whom in (("release", "vendor"), ("refund", "buyer")):
        payout = command(escrow, kind, _payout(kind), f"send the balance to the {whom}'s address")
        payout.add_argument("id", type=_escrow_id, metavar="ID")
        payout.add_argument("address", metavar="ADDRESS", help=f"the {whom}'s payout address")
    balance = command(escrow, "balance", cmd_escrow_balance, "balance read live from the wallet")
    balance.add_argument("id", type=_escrow_id, metavar="ID")
    balance.add_argument("--refresh", action="store_true", help="refresh the wallet first")
    transfer = command(escrow, "transfer", cmd_escrow_transfer, "one transfer of the escrow")
    transfer.add_argument("id", type=_escrow_id, metavar="ID")
    transfer.add_argument("txid", metavar="TXID")

    session = sub.add_parser("session", help="open or close an escrow's session").add_subparsers(
        dest="session_command", required=True, metavar="ACTION"
    )
    command(session, "open", cmd_session_open, "open the escrow's wallets").add_argument(
        "id", type=_escrow_id, metavar="ID"
    )
    command(session, "close", cmd_session_close, "store and close the wallets").add_argument(
        "id", type=_escrow_id, metavar="ID"
    )

    events = command(sub, "events", cmd_events, "events after a sequence number")
    events.add_argument("--after", type=int, default=0, metavar="N", help="after seq N (0: all)")
    events.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    client = Client(args.socket)
    try:
        code: int = args.fn(client, args)
    except CtlError as exc:
        print(f"walletctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130  # the shell's convention for "ended by SIGINT"
    except BrokenPipeError:
        # The reader went away (`walletctl events | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        client.close()
    return code
