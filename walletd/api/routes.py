"""The socket API of api.md: routes, request validation, and the error format.

Every handler gets a parsed `Request` and returns a `Response`; every failure becomes the documented
`{"error": {"code", "message"}}`. Bodies are parsed strictly: a JSON object, no unknown fields, the
right types, bounded nesting. Nothing here logs a request body (it may carry wallet passwords).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable

import structlog
import trio

from walletd.api.errors import error_answer
from walletd.api.forward import Forwarding
from walletd.api.messages import Request, Response
from walletd.api.status import Status
from walletd.errors import (
    Internal,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PublicError,
)
from walletd.escrows.lifecycle import Lifecycle
from walletd.escrows.model import PayoutKind
from walletd.escrows.service import EscrowService
from walletd.ids import ROLES, Role, check_escrow_id, check_txid
from walletd.jsontypes import JsonObject
from walletd.ops.metrics import Metrics
from walletd.sessions.registry import Caller, Registry
from walletd.state.events import EventLog, page_json

__all__ = ["UNMATCHED", "Api", "MetricsOnly", "parse_json_object"]

log = structlog.get_logger(__name__)

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]
Route = tuple[str, tuple[str, ...], dict[str, Handler]]  # template, its segments, methods
# Metric labels take these methods as they are; any other is counted as "other" (bounded labels).
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request whose path is no route (404)
MAX_AMOUNT = 2**63 - 1  # SQLite integers are signed 64-bit; more than all XMR ever paid at once


def parse_json_object(body: bytes) -> JsonObject:
    """The request body as a JSON object, or InvalidRequest saying what is wrong with it."""
    if not body:
        raise InvalidRequest("request body must be a JSON object")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not UTF-8") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object")
    return value


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _fields(body: JsonObject, required: set[str], optional: set[str]) -> None:
    unknown = set(body) - required - optional
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}")
    missing = required - set(body)
    if missing:
        raise InvalidRequest(f"missing field {sorted(missing)[0]!r}")


def _int_field(body: JsonObject, name: str, low: int, high: int) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer in {low}..{high}")
    return value


def _query_bool(request: Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"query parameter {name} must be true or false")
    return value in ("true", "1")


def _query_float(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"query parameter {name} must be a number") from None
    if not low <= value <= high:
        raise InvalidRequest(f"query parameter {name} must be in {low:g}..{high:g}")
    return value


def _query_int(request: Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise InvalidRequest(f"query parameter {name} must be a non-negative integer")
    return int(raw)


class Api:
    """Routes requests to the daemon's services."""

    def __init__(
        self,
        *,
        escrows: EscrowService,
        lifecycle: Lifecycle,
        registry: Registry,
        events: EventLog,
        status: Status,
        metrics: Metrics,
        forwarding: Forwarding,
    ) -> None:
        """`forwarding`: where each request is answered (a cluster: on the escrow's host)."""
        self._forwarding = forwarding
        self._metrics = metrics
        self._escrows = escrows
        self._lifecycle = lifecycle
        self._registry = registry
        self._events = events
        self._status = status
        self._routes: list[Route] = []
        self._route("/v1/escrows", POST=self.create_escrow, GET=self.list_escrows)
        self._route("/v1/escrows/{id}", GET=self.get_escrow)
        self._route("/v1/escrows/{id}/balance", GET=self.balance)
        self._route("/v1/escrows/{id}/transfers/{txid}", GET=self.transfer)
        self._route("/v1/escrows/{id}/session", POST=self.open_session, DELETE=self.close_session)
        self._route("/v1/escrows/{id}/release", POST=self.release)
        self._route("/v1/escrows/{id}/refund", POST=self.refund)
        self._route("/v1/escrows/{id}/payout/proof", GET=self.payout_proof)
        self._route("/v1/sessions", GET=self.sessions)
        self._route("/v1/stats", GET=self.stats)
        self._route("/v1/cluster", GET=self.cluster)
        self._route("/v1/health", GET=self.health)
        self._route("/v1/events", GET=self.events)
        self._route("/metrics", GET=self.metrics)
        # What needs the escrow's session, so in a cluster runs on the host holding the escrow.
        self._needs_owner: set[Handler] = {
            self.balance,
            self.transfer,
            self.open_session,
            self.close_session,
            self.release,
            self.refund,
            self.payout_proof,
        }

    def _route(self, template: str, **methods: Handler) -> None:
        """`template` is a path whose `{name}` segments match any one non-empty segment."""
        self._routes.append((template, tuple(template.split("/")[1:]), methods))

    def routes(self) -> dict[str, list[str]]:
        """Each route's template and the methods it declares (HEAD is implied by GET)."""
        return {template: sorted(methods) for template, _, methods in self._routes}

    def add_route(self, template: str, **methods: Handler) -> None:
        """Extra routes (the dev sandbox adds its own); `template` as in `_route`."""
        self._route(template, **methods)

    async def __call__(self, request: Request) -> Response:
        started = trio.current_time()
        route, response = await self._answer(request)
        method = request.method if request.method in _KNOWN_METHODS else "other"
        seconds = trio.current_time() - started
        self._metrics.observe_request(route, method, response.status, seconds)
        return response

    async def _answer(self, request: Request) -> tuple[str, Response]:
        """The request's route template (its metrics label) and its answer. The path is matched
        once, on every request: the label comes from the match that picks the handler."""
        found = self._find(request.segments)
        route = UNMATCHED if found is None else found[0]
        try:
            if found is None:
                raise NotFound(f"no such endpoint: {request.path[:200]}")
            _, methods, params = found
            handler = _handler(request.method, methods, params)
            response = await self._forwarding.answer(
                request,
                params.get("id"),
                functools.partial(handler, request, params),
                needs_owner=handler in self._needs_owner,
            )
            return route, response
        except MethodNotAllowed as exc:
            status, body, _ = error_answer(exc)
            return route, Response.json(status, body, headers=(("allow", ", ".join(exc.allowed)),))
        except PublicError as exc:
            status, body, _ = error_answer(exc)
            return route, Response.json(status, body)
        except Exception as exc:
            status, body, public = error_answer(exc)
            if isinstance(public, Internal):
                log.exception("request failed", method=request.method, path=request.path)
            else:
                log.warning("request failed", path=request.path, error=str(exc))
            return route, Response.json(status, body)

    def _find(
        self, segments: tuple[str, ...]
    ) -> tuple[str, dict[str, Handler], dict[str, str]] | None:
        """The first route `segments` fit: its template, methods and `{name}` parameters.

        Matching is on the request's segments, each decoded on its own (`Request.segments`): a
        decoded `/` inside a segment is part of that parameter (and no valid id has one), so an
        encoded slash can never turn `/v1/escrows/e1%2Fbalance` into a balance read."""
        for template, parts, methods in self._routes:
            params = _match_segments(parts, segments)
            if params is not None:
                return template, methods, params
        return None

    # ---- escrows ---------------------------------------------------------------------------------

    async def create_escrow(self, request: Request, _: dict[str, str]) -> Response:
        body = parse_json_object(request.body)
        _fields(body, {"escrow_id", "amount"}, {"required_confirmations", "wallets"})
        escrow_id = check_escrow_id(body["escrow_id"])
        amount = _int_field(body, "amount", 1, MAX_AMOUNT)
        confirmations = (
            _int_field(body, "required_confirmations", 1, 1000)
            if "required_confirmations" in body
            else None
        )
        digest = self._escrows.request_digest(body)
        if "wallets" in body:
            wallets = _parse_wallets(body["wallets"])
            rec, created = await self._escrows.adopt(
                escrow_id, amount, confirmations, wallets, digest
            )
        else:
            rec, created = await self._lifecycle.create(escrow_id, amount, confirmations, digest)
        return Response.json(201 if created else 200, self._escrows.to_json(rec))

    async def list_escrows(self, request: Request, _: dict[str, str]) -> Response:
        unknown = set(request.query) - {"state"}
        if unknown:
            raise InvalidRequest(f"unknown query parameter {sorted(unknown)[0]!r}")
        recs = await self._escrows.list(request.query.get("state"))
        return Response.json(200, {"escrows": [self._escrows.to_json(r) for r in recs]})

    async def get_escrow(self, _: Request, params: dict[str, str]) -> Response:
        rec = await self._escrows.get(params["id"])
        return Response.json(200, self._escrows.to_json(rec))

    async def balance(self, request: Request, params: dict[str, str]) -> Response:
        refresh = _query_bool(request, "refresh")
        result = await self._escrows.balance(params["id"], refresh=refresh)
        return Response.json(200, result.to_json())

    async def transfer(self, _: Request, params: dict[str, str]) -> Response:
        txid = check_txid(params["txid"])
        result = await self._escrows.transfer(params["id"], txid)
        return Response.json(200, result.to_json())

    async def release(self, request: Request, params: dict[str, str]) -> Response:
        return await self._payout(request, params["id"], PayoutKind.RELEASE)

    async def refund(self, request: Request, params: dict[str, str]) -> Response:
        return await self._payout(request, params["id"], PayoutKind.REFUND)

    async def _payout(self, request: Request, escrow_id: str, kind: PayoutKind) -> Response:
        body = parse_json_object(request.body)
        _fields(body, {"address"}, set())
        address = body["address"]
        if not isinstance(address, str) or not 1 <= len(address) <= 200:
            raise InvalidRequest("address must be a Monero address string")
        rec = await self._lifecycle.payout(escrow_id, kind, address)
        return Response.json(202, self._escrows.to_json(rec))

    async def payout_proof(self, _: Request, params: dict[str, str]) -> Response:
        proof = await self._lifecycle.payout_proof(params["id"])
        body = {
            "txid": proof.txid,
            "address": proof.address,
            "tx_key": proof.tx_key,
            "proof": proof.proof,
        }
        return Response.json(200, body)

    # ---- sessions --------------------------------------------------------------------------------

    async def open_session(self, _: Request, params: dict[str, str]) -> Response:
        escrow_id = params["id"]
        await self._escrows.check_exists(escrow_id)
        created, waited = await self._registry.open(escrow_id, caller=Caller.API)
        return Response.json(
            200, {"escrow_id": escrow_id, "created": created, "open_s": round(waited, 3)}
        )

    async def close_session(self, _: Request, params: dict[str, str]) -> Response:
        escrow_id = params["id"]
        await self._escrows.check_exists(escrow_id)
        closed = await self._registry.close(escrow_id, reason="explicit")
        return Response.json(200, {"escrow_id": escrow_id, "closed": closed})

    async def sessions(self, _: Request, __: dict[str, str]) -> Response:
        infos = self._registry.sessions()
        return Response.json(200, {"sessions": [i.to_json() for i in infos]})

    async def stats(self, _: Request, __: dict[str, str]) -> Response:
        return Response.json(200, self._status.stats_json())

    async def cluster(self, _: Request, __: dict[str, str]) -> Response:
        return Response.json(200, await self._status.cluster_json())

    # ---- events, health, metrics -----------------------------------------------------------------

    async def events(self, request: Request, _: dict[str, str]) -> Response:
        unknown = set(request.query) - {"after", "timeout"}
        if unknown:
            raise InvalidRequest(f"unknown query parameter {sorted(unknown)[0]!r}")
        after = _query_int(request, "after", 0)
        timeout = _query_float(request, "timeout", 0.0, 0.0, 60.0)
        # AUTOINCREMENT's counter, not max(seq): pruning never makes a valid cursor look too new.
        newest = await self._events.last_seq()
        if after > newest:
            # A cursor from another database or a typo would otherwise wait forever in silence.
            raise InvalidRequest(f"after={after} is past the newest event seq {newest}")
        events = await self._events.wait_after(after, timeout)
        return Response.json(200, page_json(after, events))

    async def health(self, _: Request, __: dict[str, str]) -> Response:
        status, body = await self._status.health()
        return Response.json(status, body)

    async def metrics(self, _: Request, __: dict[str, str]) -> Response:
        body, content_type = await self._status.metrics_text()
        return Response(200, body, content_type=content_type)


class MetricsOnly:
    """The handler behind `daemon.metrics_address`: `GET /metrics` (and HEAD) and nothing else."""

    def __init__(self, status: Status) -> None:
        self._status = status

    async def __call__(self, request: Request) -> Response:
        await trio.lowlevel.checkpoint()
        if request.segments != ("metrics",):
            status, body, _ = error_answer(
                NotFound(f"no such endpoint: {request.path[:200]} (this address serves /metrics)")
            )
            return Response.json(status, body)
        if request.method not in ("GET", "HEAD"):
            allowed = ["GET", "HEAD"]
            exc = MethodNotAllowed(
                f"method {request.method[:20]} not allowed here (use GET)", allowed
            )
            status, body, _ = error_answer(exc)
            return Response.json(status, body, headers=(("allow", ", ".join(allowed)),))
        text, content_type = await self._status.metrics_text()
        return Response(200, text, content_type=content_type)


def _handler(method: str, methods: dict[str, Handler], params: dict[str, str]) -> Handler:
    """The route's handler for `method` (HEAD is GET without the body), after checking the
    escrow id in `params`.

    An invalid escrow id is refused (400) before the method is looked at: such a path names
    nothing, so it is no known path to answer 405 for."""
    if "id" in params:
        params["id"] = check_escrow_id(params["id"])
    handler = methods.get(method)
    if handler is None and method == "HEAD":
        # HEAD is GET without the body (the server leaves it out, keeping the length).
        handler = methods.get("GET")
    if handler is None:
        allowed = _allowed(methods)
        raise MethodNotAllowed(
            f"method {method[:20]} not allowed here (use {', '.join(allowed)})", allowed
        )
    return handler


def _allowed(methods: dict[str, Handler]) -> list[str]:
    """The methods a route takes, for `Allow`: HEAD wherever GET is."""
    allowed = set(methods)
    if "GET" in allowed:
        allowed.add("HEAD")
    return sorted(allowed)


def _match_segments(template: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    """The `{name}` parameters if `segments` fit `template`, else None."""
    if len(template) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(template, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def _parse_wallets(value: object) -> dict[Role, tuple[str, str]]:
    if not isinstance(value, dict):
        raise InvalidRequest("wallets must be an object with buyer, vendor and arbiter")
    _fields(value, set(ROLES), set())
    out: dict[Role, tuple[str, str]] = {}
    for role in ROLES:
        item = value[role]
        if not isinstance(item, dict):
            raise InvalidRequest(f"wallets.{role} must be an object with file and password")
        unknown = set(item) - {"file", "password"}
        if unknown or "file" not in item:
            raise InvalidRequest(f"wallets.{role} must have exactly file and password")
        password = item.get("password", "")
        if not isinstance(password, str) or len(password) > 1024:
            raise InvalidRequest(f"wallets.{role}.password must be a string")
        out[role] = (item["file"], password)
    return out
