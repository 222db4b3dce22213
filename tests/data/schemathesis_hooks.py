"""schemathesis hooks for tests/http.rs (openapi_conformance_with_schemathesis), loaded
through `hooks` in tests/data/schemathesis.toml.

A write's session (`X-Paxosdb-Client-Id`, `X-Paxosdb-Seq`) is state across requests, a
rule OpenAPI cannot state: a client's sequence numbers only grow, and a write with a seq
older than the client's last applied one is answered 503 `outcome_unknown` (whether it
was applied earlier is no longer known). Generated requests draw client ids from a small
range (often 1) with unrelated seqs, so two of them sharing a client id with seqs going
down would get that 503, which schemathesis counts as a server error. Each request with a
well-formed pair is therefore sent under a client id of its own (the seq is kept), so
every session is fresh; malformed or half pairs are sent as generated, and still checked
for their 400.
"""

import itertools
import re
import time

import schemathesis

WELL_FORMED = re.compile(r"^[1-9][0-9]{0,18}$")
# Client ids of this run: above what generation usually draws, below 2^63.
_next_client = itertools.count(int(time.time() * 1000) * 1000 % (1 << 60) + (1 << 61))


@schemathesis.hook
def before_call(ctx, case, kwargs):
    headers = case.headers
    if not headers:
        return
    names = {n.lower(): n for n in headers}
    client = names.get("x-paxosdb-client-id")
    seq = names.get("x-paxosdb-seq")
    if client is None or seq is None:
        return
    if all(isinstance(headers[n], str) and WELL_FORMED.match(headers[n]) for n in (client, seq)):
        headers[client] = str(next(_next_client))
