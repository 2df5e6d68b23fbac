"""walletctl: look at and steer a running walletd over its Unix socket.

Output is aligned tables for people, or with --json walletd's own JSON for scripts. Exit status:
0 done; 1 walletd answered with an error (printed as `walletctl: CODE: MESSAGE`), or `status` found
walletd degraded; 2 walletd could not be reached, or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from urllib.parse import quote

import shtab

from walletd import __version__
from walletd.cli.walletctl_client import Client, CtlError
from walletd.cli.walletctl_output import (
    ATOMIC_PER_XMR,
    EVENT_HEADERS,
    EVENT_WIDTHS,
    Fields,
    duration,
    event_row,
    pairs,
    print_json,
    table,
    text,
    xmr,
)
from walletd.errors import InvalidRequest
from walletd.ids import check_escrow_id
from walletd.jsontypes import JsonObject

__all__ = ["main"]

DEFAULT_SOCKET = "/run/walletd/walletd.sock"
_POLL_S = 30  # long poll of --follow; walletd allows up to 60


def _atomic(amount: str) -> int:
    """An XMR amount typed by a person ("1.5") as atomic units, exactly; argparse type."""
    try:
        value = Decimal(amount) * ATOMIC_PER_XMR
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an XMR amount: {amount!r}") from None
    if not value.is_finite() or value <= 0 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(
            f"not a positive XMR amount (12 decimals at most): {amount}"
        )
    return int(value)


# ---- commands ------------------------------------------------------------------------------------


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    health = client.call("GET", "/v1/health", also_ok=(503,))  # 503: degraded, still an answer
    stats = client.call("GET", "/v1/stats")
    if args.json:
        print_json({"health": health, "stats": stats})
    else:
        h, s = Fields(health), Fields(stats)
        items = [("status", text(h("status")))]
        if "reason" in health:
            items.append(("reason", text(h("reason"))))
        h("active_sessions")  # the same number as in stats
        items += [
            ("version", text(h("version"))),
            ("daemon height", text(h("daemon_height"))),
            ("escrows", text(h("escrows"))),
            (
                "sessions",
                f"{text(s('active_sessions'))} of {text(s('max_sessions'))} "
                f"({round(100 * float(s('utilization') or 0))}%)",
            ),
            ("average session age", duration(s("avg_age_s"))),
            ("oldest session", duration(s("oldest_age_s"))),
            ("opened / closed", f"{text(s('opened'))} / {text(s('closed'))}"),
            ("evicted / expired", f"{text(s('evicted'))} / {text(s('expired'))}"),
            ("hits / misses", f"{text(s('hits'))} / {text(s('misses'))}"),
            ("wallet-rpc restarts", text(s("wallet_rpc_restarts"))),
        ]
        print(pairs(items + h.rest() + s.rest()))
    return 0 if health.get("status") == "ok" else 1


def cmd_sessions(client: Client, args: argparse.Namespace) -> int:
    body = client.call("GET", "/v1/sessions")
    if args.json:
        print_json(body)
        return 0
    sessions = body["sessions"]
    if not sessions:
        print("no open sessions")
        return 0
    rows = [
        (
            s["escrow_id"],
            duration(s.get("age_s")),
            duration(s.get("idle_s")),
            text(s.get("busy")),
        )
        for s in sessions
    ]
    print(table(("ESCROW", "AGE", "IDLE", "BUSY"), rows, right=(1, 2)))
    return 0


def cmd_escrow_show(client: Client, args: argparse.Namespace) -> int:
    escrow = client.call("GET", f"/v1/escrows/{quote(args.id, safe='')}")
    if args.json:
        print_json(escrow)
        return 0
    e = Fields(escrow)
    funding = e("funding") or {}
    items = [
        ("escrow", text(e("escrow_id"))),
        ("state", text(e("state"))),
        ("address", text(e("multisig_address"))),
        ("amount", f"{xmr(e('amount'))} XMR"),
        ("balance", f"{xmr(funding.get('balance'))} XMR"),
        ("unlocked", f"{xmr(funding.get('unlocked_balance'))} XMR"),
        (
            "confirmations",
            f"{text(funding.get('confirmations'))} of {text(e('required_confirmations'))}",
        ),
        ("checked at", text(funding.get("checked_at"))),
    ]
    payout = e("payout")
    if payout:
        items += [
            ("payout", text(payout.get("kind"))),
            ("payout address", text(payout.get("address"))),
            ("payout txid", text(payout.get("txid"))),
            ("payout confirmations", text(payout.get("confirmations"))),
            ("payout submitted at", text(payout.get("submitted_at"))),
        ]
    else:
        items.append(("payout", "-"))
    session = e("session") or {}
    opened = "closed"
    if session.get("open"):
        opened = (
            f"open for {duration(session.get('age_s'))}, idle {duration(session.get('idle_s'))}"
        )
    items += [
        ("session", opened),
        ("created at", text(e("created_at"))),
        ("updated at", text(e("updated_at"))),
    ]
    print(pairs(items + e.rest()))
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
        print_json(body)
        return 0
    b = Fields(body)
    items = [
        ("balance", f"{xmr(b('balance'))} XMR"),
        ("unlocked", f"{xmr(b('unlocked_balance'))} XMR"),
        ("blocks to unlock", text(b("blocks_to_unlock"))),
        ("height", text(b("height"))),
    ]
    print(pairs(items + b.rest()))
    return 0


def cmd_escrow_transfer(client: Client, args: argparse.Namespace) -> int:
    path = _escrow_path(args.id, f"/transfers/{quote(args.txid, safe='')}")
    body = client.call("GET", path)
    if args.json:
        print_json(body)
        return 0
    t = Fields(body)
    items = [
        ("txid", text(t("txid"))),
        ("direction", text(t("direction"))),
        ("amount", f"{xmr(t('amount'))} XMR"),
        ("height", text(t("height"))),
        ("confirmations", text(t("confirmations"))),
        ("in pool", text(t("in_pool"))),
    ]
    print(pairs(items + t.rest()))
    return 0


def cmd_escrow_list(client: Client, args: argparse.Namespace) -> int:
    params: dict[str, str | int] = {} if args.state is None else {"state": args.state}
    body = client.call("GET", "/v1/escrows", params=params)
    if args.json:
        print_json(body)
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
                text(e.get("state")),
                xmr(e.get("amount")),
                xmr(funding.get("balance")),
                f"{text(funding.get('confirmations'))}/{text(e.get('required_confirmations'))}",
                "open" if (e.get("session") or {}).get("open") else "-",
                text(e.get("updated_at")),
            )
        )
    headers = ("ESCROW", "STATE", "AMOUNT XMR", "BALANCE XMR", "CONF", "SESSION", "UPDATED")
    print(table(headers, rows, right=(2, 3, 4)))
    return 0


def cmd_session_open(client: Client, args: argparse.Namespace) -> int:
    body = client.call("POST", f"/v1/escrows/{quote(args.id, safe='')}/session")
    if args.json:
        print_json(body)
    elif body.get("created"):
        print(f"session {args.id} opened in {float(body.get('open_s') or 0):.1f}s")
    else:
        print(f"session {args.id} was already open")
    return 0


def cmd_session_close(client: Client, args: argparse.Namespace) -> int:
    body = client.call("DELETE", f"/v1/escrows/{quote(args.id, safe='')}/session")
    if args.json:
        print_json(body)
    else:
        print(f"session {args.id} {'closed' if body.get('closed') else 'was not open'}")
    return 0


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
            print_json({"events": events, "next": after})
        elif events:
            print(table(EVENT_HEADERS, map(event_row, events), right=(0,)))
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
                    row = table(
                        EVENT_HEADERS,
                        [event_row(event)],
                        right=(0,),
                        min_widths=EVENT_WIDTHS,
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
