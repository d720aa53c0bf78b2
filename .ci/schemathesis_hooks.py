"""Schemathesis hooks for `.ci/schemathesis` (loaded through SCHEMATHESIS_HOOKS).

`GET /v1/changes?wait=N` is a long poll: with `after` beyond the newest seq it answers
only after N seconds (the server caps N at 300). The document allows any N >= 0 (larger
ones are capped, not refused), so schemathesis may ask for minutes. Every wait above
WAIT_CAP is sent as WAIT_CAP: the long poll is still exercised (it waits, then answers
an empty page), the run stays bounded. Values that are not numbers are left alone, so
that the server's 400 for them is still tested.

`POST /webhooks/dodo` answers 401 to anything unsigned, and schemathesis cannot sign. So
three in four generated deliveries with a webhook-id (picked by its hash) are signed here with the server's
secret (ENTSYNC_CI_WEBHOOK_SECRET), over the exact bytes sent, with a fresh timestamp:
the generated bodies then get past verification and reach the parser, the engine and
the store (stored as malformed, unhandled, ...), and their 200 is checked against the
document. The others, and those with a header missing, still check the 401s.
"""

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import MutableMapping

import schemathesis

WAIT_CAP = 1.0


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path == "/webhooks/dodo":
        sign(case, kwargs)
        return
    if case.operation.path != "/v1/changes" or not isinstance(case.query, MutableMapping):
        return
    wait = case.query.get("wait")
    if isinstance(wait, bool):
        return
    try:
        value = float(wait)
    except (TypeError, ValueError):
        return
    if value > WAIT_CAP:
        case.query["wait"] = WAIT_CAP


def sign(case, kwargs):
    secret = os.environ.get("ENTSYNC_CI_WEBHOOK_SECRET")
    headers = case.headers if isinstance(case.headers, MutableMapping) else None
    if not secret or headers is None or "body" in kwargs or "data" in kwargs:
        return
    webhook_id = headers.get("webhook-id")
    if not isinstance(webhook_id, str) or not webhook_id.isascii():
        return
    if "webhook-signature" not in headers or "webhook-timestamp" not in headers:
        return  # a missing header stays missing: its 401 is what is under test
    if not webhook_id or hashlib.sha256(webhook_id.encode()).digest()[0] % 4 == 0:
        return  # unsigned: a 401
    try:
        body = json.dumps(case.body).encode()
    except (TypeError, ValueError):
        return
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = str(int(time.time()))
    signed = b".".join([webhook_id.encode(), timestamp.encode(), body])
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    headers["webhook-timestamp"] = timestamp
    headers["webhook-signature"] = "v1," + signature
    kwargs["data"] = body
