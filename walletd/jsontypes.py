"""The one place walletd says "untyped JSON".

wallet-rpc's and monerod's answers, the socket API's request and response bodies, and event data
are JSON objects whose values are whatever the other side sent: their shape is checked where
they are read (field by field, with a clear error), not promised by a type. Everything else in
walletd is typed; an `Any` outside these aliases needs a reason beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["JsonMapping", "JsonObject"]

JsonObject = dict[str, Any]  # Any: a JSON value, checked where it is read
JsonMapping = Mapping[str, Any]  # Any: the same, read-only
