"""A request head as h11 delivers it, turned into a `Request`: its target split and decoded.

The path is split at its literal `/` before anything is decoded, so an encoded `%2F` stays inside
its segment (see `Request.segments`); a target that is not ASCII, not a path, not valid
percent-encoded UTF-8, or carries control characters or a repeated query parameter, is a
an `InvalidRequest` (400, the connection kept). Also the two figures the connection checks a head
against its limits with: its size and its announced body length.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from walletd.api.messages import PeerCred, Request
from walletd.errors import InvalidRequest

__all__ = ["build_request", "content_length", "head_size"]

_MAX_QUERY_FIELDS = 100


def head_size(head: h11.Request) -> int:
    """Roughly the bytes of the head; h11 only bounds heads that arrive in several reads."""
    size = len(head.method) + len(head.target) + len(b" HTTP/1.1\r\n\r\n")
    return size + sum(len(name) + len(value) + 4 for name, value in head.headers)


def content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits and unambiguous
    return None


def build_request(head: h11.Request, body: bytes, peer: PeerCred) -> Request:
    """The `Request` a handler gets; `InvalidRequest` if its target cannot be parsed."""
    segments, query = _parse_target(head.target)
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(
        method=head.method.decode("ascii"),
        path="/" + "/".join(segments),
        query=query,
        headers=headers,
        body=body,
        peer=peer,
        segments=segments,
    )


def _parse_target(target: bytes) -> tuple[tuple[str, ...], dict[str, str]]:
    """Split an origin-form (or absolute-form) target into decoded path segments and a query dict.

    The path is split at `/` before anything is decoded (see `Request.segments`)."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("request target is not ASCII") from None
    if text.startswith(("http://", "https://")):
        try:
            parts = urlsplit(text)
        except ValueError:  # e.g. an unclosed IPv6 bracket in the host
            raise InvalidRequest("request target is not a valid URL") from None
        raw_path, raw_query = parts.path or "/", parts.query
    elif text.startswith("/"):
        raw_path, _, raw_query = text.partition("?")
    else:
        raise InvalidRequest("request target must be a path")
    try:
        segments = tuple(unquote(seg, errors="strict") for seg in raw_path.split("/")[1:])
    except UnicodeDecodeError:
        raise InvalidRequest("path is not valid percent-encoded UTF-8") from None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for seg in segments for ch in seg):
        raise InvalidRequest("path contains control characters")
    return segments, _parse_query(raw_query)


def _parse_query(raw_query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            raw_query, keep_blank_values=True, errors="strict", max_num_fields=_MAX_QUERY_FIELDS
        )
    except ValueError:  # bad UTF-8 or too many fields
        raise InvalidRequest("invalid query string") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise InvalidRequest(f"query parameter {key!r} is repeated")
        query[key] = value
    return query
