"""Example sidekv guest in Python: an allow-list of client IDs.

The operator passes the allowed IDs through the guest config:

    KVSTORE_GUEST_CLIENTS='billing,reports,frontend'

Every request sends `X-Client-Id: <id>`. An ID in the list may `GET /{key}`
(the value's bytes) and `POST|PUT /{key}` (store the body); anything else is
403. The check compares the presented ID with every allowed one using
`hmac.compare_digest` and does not stop at the first match, so its timing
says nothing about which IDs exist.

Built with componentize-py against the sidekv `guest` world (see build.sh):
the class `Handler` below implements the exported `handler` interface.
"""

import hmac
import json
from urllib.parse import unquote

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.handler import Request, Response
from wit_world.imports import config, kv, types


def _reply(status: int, obj: dict) -> Response:
    return Response(
        status=status,
        headers=[("content-type", b"application/json")],
        body=json.dumps(obj, separators=(",", ":")).encode(),
        stream=None,
    )


def _allowed_clients() -> list[bytes]:
    """The configured IDs (read on every request: nothing is cached in the
    instance, which the host may reuse)."""
    raw = config.get("clients") or ""
    return [c.strip().encode() for c in raw.split(",") if c.strip()]


def _client_allowed(req: Request) -> bool:
    presented = None
    for name, value in req.headers:
        if name == "x-client-id":
            presented = value.strip()
            break
    if not presented:
        return False
    ok = False
    for client in _allowed_clients():
        # compare_digest takes the same time wherever the bytes differ; `|`
        # (not `or`) keeps comparing after a match.
        ok |= hmac.compare_digest(client, presented)
    return ok


def _kv_error(e: Err) -> Response:
    err = e.value
    if isinstance(err, (types.KvError_InvalidKey, types.KvError_InvalidArgument)):
        return _reply(400, {"error": err.value})
    if isinstance(err, types.KvError_ValueTooLarge):
        return _reply(413, {"error": f"value over {err.value} bytes"})
    if isinstance(err, (types.KvError_Unavailable, types.KvError_OutcomeUnknown)):
        return _reply(503, {"error": err.value})
    if isinstance(err, types.KvError_StorageFull):
        return _reply(507, {"error": "the disk holding the database is full; nothing was written"})
    return _reply(500, {"error": str(getattr(err, "value", err))})


_NO_CONDITIONS = kv.WriteOptions(ttl_ms=None, if_match=None, if_absent=False)


class Handler(exports.Handler):
    def handle(self, req: Request) -> Response:
        if not _client_allowed(req):
            return _reply(403, {"error": "missing or unknown X-Client-Id"})
        path = req.path_with_query.split("?", 1)[0]
        try:
            key = unquote(path.lstrip("/"), errors="strict")
        except UnicodeDecodeError:
            return _reply(400, {"error": "the key is not valid UTF-8 once percent-decoded"})
        if not key:
            return _reply(400, {"error": "the path must be /{key}"})
        try:
            if req.method in ("GET", "HEAD"):
                entry = kv.get(key)
                if entry is None:
                    return _reply(404, {"error": "not found"})
                return Response(
                    status=200,
                    headers=[
                        ("content-type", b"application/octet-stream"),
                        ("x-versionstamp", entry.versionstamp.encode()),
                    ],
                    body=b"" if req.method == "HEAD" else entry.value,
                    stream=None,
                )
            if req.method in ("POST", "PUT"):
                out = kv.set(key, req.body, _NO_CONDITIONS)
                if isinstance(out, kv.WriteOutcome_Committed):
                    return _reply(200, {"ok": True, "versionstamp": out.value})
                return _reply(412, {"ok": False})
            return _reply(405, {"error": "method not allowed"})
        except Err as e:
            return _kv_error(e)
