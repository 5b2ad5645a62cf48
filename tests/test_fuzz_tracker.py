"""Fuzz suite: schemathesis-generated requests against every route of the real tracker, a closed one
(operator and seed credentials set) started as a subprocess on 127.0.0.1.

The schema is the tracker's own: FastAPI's OpenAPI document of `tracker.app.create_app`, so a route
added later is fuzzed without anyone writing it down. A fifth of the cases run on a copy whose repo,
revision and torrent parameters name what is really there (a registered revision and its torrent),
so they get past "not found" into the code that renders manifests and mints tickets; long polls are
kept short.

Every case carries a credential picked by its number in the run: most carry a role the route allows
(read off the route's `roles(...)` dependency), the rest none, a forged node token, or a role the
route refuses. Whatever the input:
- never a 5xx, but the mirror queue's 503 TooManyJobs (what a flood of new revisions is answered
  with by design; counted in the summary);
- no credential or a forged one: 401 from every route behind the gate, before any other check;
- a role the route refuses: 403 (422 only when a request body was also sent: FastAPI decodes it
  before the route's dependencies run); never a 2xx;
- a 4xx carries a reason: `{"error", "detail"}` JSON, or a bencoded failure reason on announce/scrape;
- no response and no log line holds a credential; the tracker stays healthy and logs no traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis  # not skipped when missing: a fuzz suite that quietly runs nothing is a defect
from fastapi.routing import APIRoute
from fastbencode import bdecode

from hfbt.config import TrackerConfig
from tests.fuzz.runner import Reply, Sent, assert_clean, fuzz
from tests.test_fuzz_announce import register_torrent
from tests.test_tracker_hardening import TrackerProcess, start_tracker_process
from tracker.app import create_app

CASES = int(os.environ.get("HFBT_FUZZ_CASES", "10000"))
OPERATOR, SEED = "fuzz-op-" + "o" * 24, "fuzz-seed-" + "s" * 24
NODE_NAME = "fuzz-node-3b9e"
FORGED = "hfbtn_" + NODE_NAME + ".not-the-secret"
TARGET_REPO, TARGET_COMMIT = "fuzz/target", "f" * 40  # what register_torrent registers
BITTORRENT = ("/announce", "/scrape")


@dataclass
class Tracker:
    process: TrackerProcess
    node_token: str
    info_hash: str


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    env = {"HFBT_OPERATOR_TOKEN": OPERATOR, "HFBT_SEED_TOKEN": SEED}
    process = start_tracker_process(tmp_path, env=env)
    try:
        with httpx.Client(base_url=process.url, timeout=10) as c:
            c.headers["Authorization"] = f"Bearer {SEED}"
            info_hash = register_torrent(c).hex()
            c.headers["Authorization"] = f"Bearer {OPERATOR}"
            r = c.post("/api/v1/nodes", json={"name": NODE_NAME})
            assert r.status_code == 201, r.text
        yield Tracker(process, r.json()["token"], info_hash)
    finally:
        process.stop()


def route_roles(tmp_path: Path) -> dict[str, tuple[str, ...]]:
    """{"GET /api/v1/manifest": ("node", "operator"), ...}: what each route's `roles()` allows
    (absent: a route without one, public or answered by ticket)."""
    cfg = TrackerConfig(db=tmp_path / "schema.db", operator_token=OPERATOR, seed_token=SEED)
    app = create_app(cfg)
    found: dict[str, tuple[str, ...]] = {}
    routes = list(app.routes)
    while routes:
        route = routes.pop()
        if hasattr(route, "original_router"):  # an included router (FastAPI >= 0.165 keeps it whole)
            routes += route.original_router.routes
            continue
        if not isinstance(route, APIRoute):
            continue
        stack = list(route.dependant.dependencies)
        while stack:
            dep = stack.pop()
            allowed = getattr(dep.call, "roles", None)
            if allowed:
                for method in route.methods:
                    found[f"{method} {route.path}"] = allowed
            stack += dep.dependencies
    assert len(found) >= 15, found  # the introspection must have found the gated routes
    return found


def tracker_schema(tmp_path: Path, info_hash: str, pinned: bool = False):  # noqa: ANN201 - OpenApiSchema
    """The tracker's OpenAPI document; `pinned`: with the parameters that name a repo, a revision or a
    torrent limited to what is registered (an enum inside anyOf is merged away by the generator)."""
    cfg = TrackerConfig(db=tmp_path / "schema.db", operator_token=OPERATOR, seed_token=SEED)
    doc = create_app(cfg).openapi()
    pins = {
        "repo_id": [TARGET_REPO],
        "revision": [TARGET_COMMIT, "main"],
        "name": [info_hash, f"{info_hash}.torrent"],
    }
    for path_item in doc["paths"].values():
        for op in path_item.values():
            for param in op.get("parameters", []):
                if pinned and param["name"] in pins:
                    param["schema"] = {"enum": pins[param["name"]]}
                if param["name"] == "wait":
                    # Long polls (manifest, next-job) hold a case up to MAX_WAIT_S, 20-25 s by default:
                    # always short here, or a few hundred of them are the whole run. The clamp of
                    # huge, negative and non-finite waits is tracker/mirror.py's.
                    param["required"] = True
                    param["schema"] = {"type": "number", "maximum": 0.2}
    return schemathesis.openapi.from_dict(doc)


def credentials(roles: dict[str, tuple[str, ...]], node_token: str):  # noqa: ANN201 - runner.Authorize
    token_of = {"operator": OPERATOR, "seed": SEED, "node": node_token}

    def authorize(label: str, n: int) -> tuple[str, dict[str, str]]:
        allowed = roles.get(label)
        if allowed is None:
            return "", {}
        kind = ("right",) * 7 + ("none", "forged", "wrong")
        pick = kind[n % len(kind)]
        if pick == "none":
            return pick, {}
        if pick == "forged":
            return pick, {"Authorization": f"Bearer {FORGED}"}
        if pick == "wrong":
            refused = [r for r in token_of if r not in allowed]
            if not refused:
                pick = "right"
            else:
                return pick, {"Authorization": f"Bearer {token_of[refused[n % len(refused)]]}"}
        role = allowed[n % len(allowed)]
        return pick, {"Authorization": f"Bearer {token_of[role]}"}

    return authorize


def tracker_checks(secrets: list[bytes], busy: list[int]):  # noqa: ANN201 - runner.Check
    def check(sent: Sent, r: Reply) -> str | None:
        for secret in secrets:
            if secret in r.body or any(secret.decode() in v for v in r.headers.values()):
                return "a credential in the response"
        if r.status == 503 and _reason(r) == "TooManyJobs":
            busy.append(1)
            return None
        if r.status >= 500:
            return f"HTTP {r.status} {r.body[:300]!r}"
        if sent.credential in ("none", "forged") and r.status != 401:
            return f"HTTP {r.status} without a valid credential (expected 401)"
        if sent.credential == "wrong":
            body_sent = "body=None" not in sent.request
            if r.status != 403 and not (r.status == 422 and body_sent):
                return f"HTTP {r.status} for a role the route refuses (expected 403)"
        if 400 <= r.status < 500:
            return _reason_problem(sent, r)
        return None

    return check


def _reason(r: Reply) -> str:
    try:
        body = json.loads(r.body)
    except ValueError:
        return ""
    return body.get("error", "") if isinstance(body, dict) else ""


def _reason_problem(sent: Sent, r: Reply) -> str | None:
    if r.body == b"Invalid HTTP request received.":  # uvicorn's h11 parser, before any tracker code
        return None
    if sent.template.startswith(BITTORRENT):
        try:
            failure = bdecode(r.body).get(b"failure reason")
        except Exception:  # noqa: BLE001 - any undecodable body is the problem reported
            failure = None
        return None if failure else f"HTTP {r.status} without a failure reason: {r.body[:200]!r}"
    try:
        body = json.loads(r.body)
    except ValueError:
        return f"HTTP {r.status} without a JSON reason: {r.body[:200]!r}"
    if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body.get("detail")):
        return f"HTTP {r.status} without an error reason: {r.body[:200]!r}"
    return None


def test_fuzz_tracker(tracker: Tracker, tmp_path: Path) -> None:
    roles = route_roles(tmp_path)
    schema = tracker_schema(tmp_path, tracker.info_hash)
    secret = tracker.node_token.split(".", 1)[1].encode()
    busy: list[int] = []
    check = tracker_checks([OPERATOR.encode(), SEED.encode(), secret], busy)
    authorize = credentials(roles, tracker.node_token)
    # Most cases are schemathesis' own strings; a fifth name what is registered, so they get past
    # "not found" into manifest rendering, torrent files and ticket minting.
    outcome = fuzz(schema, tracker.process.url, CASES - CASES // 5, check, authorize=authorize)
    pinned = tracker_schema(tmp_path, tracker.info_hash, pinned=True)
    fuzz(pinned, tracker.process.url, CASES // 5, check, authorize=authorize, outcome=outcome)
    print(f"503 TooManyJobs: {len(busy)}")
    # Every gated route got cases with each kind of credential (the checks above judged them).
    gated = {label for label in outcome.by_operation if label in roles}
    assert gated == set(roles), set(roles) - gated
    r = httpx.get(f"{tracker.process.url}/healthz", timeout=5)
    assert r.status_code == 200
    log = tracker.process.log_text()
    for token in (OPERATOR, SEED, secret.decode()):
        assert token not in log
    assert "event=internal_error" not in log
    assert_clean(outcome, {"tracker": log}, CASES)
    reached = {label: n for (label, status), n in outcome.by_operation_status.items() if status == 200}
    for label in ("GET /api/v1/manifest", "GET /api/v1/torrents/{name}", "GET /api/v1/tickets/{name}"):
        assert reached.get(label), f"no case of {label} reached a registered revision: {reached}"
