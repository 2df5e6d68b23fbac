"""docs/openapi.yaml describes the socket API walletd really serves.

Every route in `Api` is documented and every documented route exists; a scenario calls every
documented operation, and each answer (errors included) validates against the document's schema
for its path, method and status, with JSON Schema 2020-12 as OpenAPI 3.1 uses it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import trio
import yaml

from tests.fakes import FakeDaemon, fake_app, make_fake_multisig, raw_call, start
from tests.harness import run_monitor, until_state
from walletd.app import App
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

DOC_PATH = Path(__file__).parent.parent / "docs" / "openapi.yaml"
AMOUNT = 10**12
METHODS = ("get", "post", "put", "patch", "delete")


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    return doc


class Checker:
    """Validates answers against the document and records which operations were seen."""

    def __init__(self, app: App, doc: dict[str, Any]) -> None:
        self.app = app
        self.doc = doc
        self.seen: set[tuple[str, str, int]] = set()
        self._paths = [
            (template, re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"))
            for template in doc["paths"]
        ]

    def _schema(self, schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
        # The document's components as the root, so "#/components/..." references resolve.
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        }
        jsonschema.Draft202012Validator.check_schema(root)
        return jsonschema.Draft202012Validator(root)

    def _deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    async def __call__(
        self, method: str, path: str, body: object = None, *, status: int | None = None
    ) -> Any:
        """Call the API, validate the answer, return its JSON (or text for /metrics)."""
        response = await raw_call(self.app, method, path, body)
        if status is not None:
            assert response.status == status, (method, path, response.status, response.body)
        target = path.partition("?")[0]
        template = next((t for t, rx in self._paths if rx.match(target)), None)
        operation = None
        if template is not None:
            operation = self.doc["paths"][template].get(method.lower())
        if operation is None:
            # An unknown path (404) or a method the path does not take (405): the error format.
            assert response.status in (404, 405), (method, path, response.status)
            answer = self._deref({"$ref": "#/components/responses/Error"})
        else:
            assert template is not None
            responses = operation["responses"]
            assert str(response.status) in responses, (
                f"{method} {template} answered {response.status}, not documented"
            )
            answer = self._deref(responses[str(response.status)])
            self.seen.add((template, method.lower(), response.status))
            if 200 <= response.status < 300 and "requestBody" in operation:
                request = self._deref(operation["requestBody"])
                schema = request["content"]["application/json"]["schema"]
                self._schema(schema).validate(body)
        (content_type, media), *_ = answer["content"].items()
        assert response.content_type.startswith(content_type), response.content_type
        if content_type == "application/json":
            value = json.loads(response.body)
            self._schema(media["schema"]).validate(value)
            return value
        return response.body.decode()

    async def escrow(self, escrow_id: str) -> dict[str, Any]:
        """GET /v1/escrows/{id}, validated (what `until_state` reads)."""
        escrow: dict[str, Any] = await self("GET", f"/v1/escrows/{escrow_id}", status=200)
        return escrow


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    """The routes walletd serves and the paths in docs/openapi.yaml are the same, method by
    method (HEAD is implied by GET in both)."""
    doc = _doc()
    world = FakeWalletWorld()
    app = fake_app(tmp_path, world, FakePool(world))
    served = {t: sorted(m.lower() for m in ms) for t, ms in app.api.routes().items()}
    documented = {
        template: sorted(m for m in item if m in METHODS) for template, item in doc["paths"].items()
    }
    assert served == documented
    assert doc["openapi"].startswith("3.1")


async def test_every_documented_operation_answers_as_documented(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Each documented operation is called and answers with a documented status and a body that
    validates against its schema; error answers (400, 404, 405, 409, 503) validate too."""
    doc = _doc()
    world = FakeWalletWorld()
    chain = FakeDaemon(world)
    multisig = await make_fake_multisig(world, "m")
    app = fake_app(tmp_path, world, FakePool(world), chain=chain)
    check = Checker(app, doc)
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        await run_monitor(nursery, app, cold_interval=5)

        create = {"escrow_id": "o1", "amount": AMOUNT, "required_confirmations": 5}
        escrow = await check("POST", "/v1/escrows", create, status=201)
        await check("POST", "/v1/escrows", create, status=200)
        await check("POST", "/v1/escrows", {**create, "amount": 5}, status=409)
        await check("POST", "/v1/escrows", {"escrow_id": "o1"}, status=400)
        await check("POST", "/v1/escrows", multisig.adopt_body("a1"), status=201)
        await check("GET", "/v1/escrows", status=200)
        await check("GET", "/v1/escrows?state=awaiting_funding", status=200)
        await check("GET", "/v1/escrows?state=nope", status=400)
        await check("GET", "/v1/escrows/nope", status=404)
        await check("GET", "/v1/escrows/..", status=400)
        await check("DELETE", "/v1/escrows", status=405)
        await check("GET", "/v1/nothing", status=404)

        vendor = world.add_wallet("vendor-payout", "x").address
        buyer = world.add_wallet("buyer-payout", "x").address
        await check("POST", "/v1/escrows/o1/release", {"address": vendor}, status=409)
        await check("POST", "/v1/escrows/o1/release", {"address": ""}, status=400)

        txid = world.credit(escrow["multisig_address"], AMOUNT, unlocked=True)
        world.credit(multisig.address, AMOUNT, unlocked=True)
        await until_state(check.escrow, "o1", "ready", timeout=600)
        await until_state(check.escrow, "a1", "ready", timeout=600)
        await check("GET", "/v1/escrows/o1/balance", status=200)
        await check("GET", "/v1/escrows/o1/balance?refresh=true", status=200)
        await check("GET", "/v1/escrows/o1/balance?refresh=maybe", status=400)
        await check("GET", f"/v1/escrows/o1/transfers/{txid}", status=200)
        await check("GET", f"/v1/escrows/o1/transfers/{'0' * 64}", status=404)
        await check("GET", "/v1/escrows/o1/transfers/xyz", status=400)

        await check("POST", "/v1/escrows/a1/session", status=200)
        await check("GET", "/v1/sessions", status=200)
        await check("DELETE", "/v1/escrows/a1/session", status=200)
        await check("POST", "/v1/escrows/nope/session", status=404)
        await check("DELETE", "/v1/escrows/nope/session", status=404)

        await check("GET", "/v1/escrows/o1/payout/proof", status=404)
        await check("POST", "/v1/escrows/o1/release", {"address": vendor}, status=202)
        await check("GET", "/v1/escrows/o1/payout/proof", status=200)
        await check("POST", "/v1/escrows/o1/refund", {"address": buyer}, status=409)
        await check("POST", "/v1/escrows/a1/refund", {"address": buyer}, status=202)
        await check("POST", "/v1/escrows/nope/refund", {"address": buyer}, status=404)
        world.mine(10)
        await until_state(check.escrow, "o1", "completed", timeout=600)

        await check("GET", "/v1/stats", status=200)
        await check("GET", "/v1/cluster", status=200)
        await check("GET", "/v1/health", status=200)
        chain.down = True
        await check("GET", "/v1/health", status=503)
        chain.down = False
        page = await check("GET", "/v1/events?after=0", status=200)
        assert page["events"], page
        await check("GET", f"/v1/events?after={page['next'] + 1}", status=400)
        await check("GET", "/v1/events?after=0&timeout=61", status=400)
        assert "walletd_" in await check("GET", "/metrics", status=200)
        nursery.cancel_scope.cancel()

    documented = {
        (template, method)
        for template, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    answered = {(template, method) for template, method, status in check.seen if status < 300}
    assert documented == answered
