"""Schemathesis hooks for scripts/schemathesis.sh.

docs/openapi.yaml says all it can in JSON Schema; these hooks supply the
few rules of the API that JSON Schema cannot state, each of which the
document states in words:

- `/_import` takes NDJSON, which the document describes as an array of
  line objects: serialize the array as lines.
- Keys and prefixes are limited to 2048 UTF-8 *bytes*; `maxLength` counts
  characters. A generated valid request whose key is 2048 characters but
  more bytes is not valid: it is skipped.
- A list `cursor` is opaque (the base64url of the previous page's last
  key, under the same prefix): a generated string is almost never one, so
  a valid request gets a real cursor instead.
- An imported `expires_at` must be at most 100 years from now, a bound
  that moves with the clock: a valid request gets one inside it.
- A long-poll (`GET /{key}?watch=`) waits up to `timeout` (default 30 s)
  for a change no generated request makes: it gets a short timeout; a
  queue take (`POST /_queue/take`) likewise gets a short `wait`.
- An SSE resume position (`after`, `Last-Event-ID`) must be one the store
  issued, at or below its newest commit (beyond it: 400): a valid request
  resumes from the beginning of history instead of a random position.
- An imported `key_b64` must decode to 1–2048 bytes not starting with `_`,
  and an `le64` value must be a decimal u64: a valid line that breaks
  either gets a key / value that keeps it.

Only cases generated as valid ("positive") are adjusted (the timeout
excepted, which keeps any invalid value it was given), so every invalid
request still goes out as generated.
"""

import base64
import json
import re
import time

import schemathesis

MAX_KEY_BYTES = 2048
# The position before every commit: always issued (and never beyond the newest).
RESUME_FROM_START = "00000000000000000000"
HUNDRED_YEARS_MS = 100 * 365 * 24 * 3600 * 1000

# ---------------------------------------------------------------- NDJSON ----


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    # An array is the sequence of lines. Anything else is not a sequence of
    # lines: send it as one line holding a JSON array, which no line may be.
    if isinstance(value, list):
        text = "".join(json.dumps(line) + "\n" for line in value)
    else:
        text = json.dumps([value]) + "\n"
    return text.encode()


# ----------------------------------------------------------------- cases ----


def _positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _too_long(s):
    return isinstance(s, str) and len(s.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES


def _cursor_ok(cursor, prefix):
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode())
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
            return False  # not canonical: the server decodes strictly
        key = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    return 0 < len(raw) <= MAX_KEY_BYTES and key.startswith(prefix)


def _key_b64_ok(s):
    try:
        raw = base64.b64decode(s.encode(), validate=True)
    except ValueError:
        return False
    return 0 < len(raw) <= MAX_KEY_BYTES and raw[:1] != b"_"


def _decimal_u64_b64(s):
    try:
        text = base64.b64decode(s.encode(), validate=True).decode("ascii")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False
    return text.isdigit() and len(text) <= 20 and int(text) < 2**64


@schemathesis.hook
def filter_case(ctx, case):
    """Skip "valid" cases that break a byte limit JSON Schema cannot state."""
    if not _positive(case):
        return True
    strings = []
    if isinstance(case.path_parameters, dict):
        strings.append(case.path_parameters.get("key"))
    if isinstance(case.query, dict):
        strings.append(case.query.get("prefix"))
        undelivered = case.query.get("undelivered")  # /_queue
        strings.extend(undelivered if isinstance(undelivered, list) else [undelivered])
    body = case.body
    if isinstance(body, dict):  # /_atomic
        for item in (body.get("checks") or []) + (body.get("mutations") or []):
            if isinstance(item, dict):
                strings.append(item.get("key"))
                keys = item.get("keys_if_undelivered")  # an enqueue
                if isinstance(keys, list):
                    strings.extend(keys)
    elif isinstance(body, list):  # /_import
        strings.extend(line.get("key") for line in body if isinstance(line, dict))
    return not any(_too_long(s) for s in strings)


VALID_TIMEOUT = re.compile(
    r"^(0*(?:[0-9]{1,5}|[0-2][0-9]{5}|300000)(?:ms)?|0*(?:[0-9]{1,2}|[0-2][0-9]{2}|300)s|0*[0-5]m)$"
)


@schemathesis.hook
def map_case(ctx, case):
    op = ctx.operation
    if op is None:
        return case
    method, path = op.method.upper(), op.path
    query = case.query if isinstance(case.query, dict) else None

    if method == "GET" and path == "/{key}" and query is not None and "watch" in query:
        timeout = query.get("timeout")
        if timeout is None or (isinstance(timeout, str) and VALID_TIMEOUT.match(timeout)):
            query["timeout"] = "50ms"

    if method == "POST" and path == "/_queue/take" and query is not None:
        wait = query.get("wait")
        if wait is None or (isinstance(wait, str) and VALID_TIMEOUT.match(wait)):
            query["wait"] = "50ms"

    if not _positive(case):
        return case

    if method == "GET" and path == "/" and query is not None and query.get("cursor"):
        prefix = query.get("prefix") if isinstance(query.get("prefix"), str) else ""
        if not _cursor_ok(query["cursor"], prefix):
            key = (prefix + "k").encode("utf-8", "surrogatepass")
            if len(key) <= MAX_KEY_BYTES:
                query["cursor"] = base64.urlsafe_b64encode(key).decode().rstrip("=")
            else:
                del query["cursor"]

    if method == "GET" and path == "/_watch":
        if query is not None and isinstance(query.get("after"), str):
            query["after"] = RESUME_FROM_START
        headers = case.headers if isinstance(case.headers, dict) else None
        if headers is not None:
            for name in list(headers):
                if name.lower() == "last-event-id" and isinstance(headers[name], str) and headers[name]:
                    headers[name] = RESUME_FROM_START

    if method == "POST" and path == "/_import" and isinstance(case.body, list):
        for line in case.body:
            if not isinstance(line, dict):
                continue
            if isinstance(line.get("key_b64"), str) and not _key_b64_ok(line["key_b64"]):
                line["key_b64"] = base64.b64encode(b"k").decode()
            if line.get("encoding") == "le64" and not _decimal_u64_b64(line.get("value")):
                line["value"] = base64.b64encode(b"7").decode()
        latest = int(time.time() * 1000) + HUNDRED_YEARS_MS - 24 * 3600 * 1000
        for line in case.body:
            at = line.get("expires_at") if isinstance(line, dict) else None
            if isinstance(at, int) and at > latest:
                line["expires_at"] = latest
    return case
