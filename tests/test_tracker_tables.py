"""The tracker's small parts on their own: the piece-server table, the hub-access rules, the error JSON
and the request log's redaction."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tracker.errors import ApiError, install_error_handlers
from tracker.pieceservers import PieceServers, seed_piece_url, url_from_client
from tracker.requestlog import redact_path

# -- piece servers -----------------------------------------------------------------------------------


def test_piece_url_from_the_client_address_brackets_ipv6() -> None:
    assert url_from_client("10.0.0.5", 6883) == "http://10.0.0.5:6883"
    assert url_from_client("fd00::5", 6883) == "http://[fd00::5]:6883"
    assert url_from_client("seed-0.local", 80) == "http://seed-0.local:80"


def test_seed_piece_url_prefers_the_full_url_then_the_port() -> None:
    assert seed_piece_url("https://p.example:9/", 6883, "10.0.0.5") == "https://p.example:9/"
    assert seed_piece_url(None, 6883, "10.0.0.5") == "http://10.0.0.5:6883"
    assert seed_piece_url(None, 6883, None) is None  # no client address to put the port on
    assert seed_piece_url(None, None, "10.0.0.5") is None


def test_piece_servers_lists_only_alive_seeds_sorted() -> None:
    table = PieceServers()
    table.set("s2", "http://b:2/")
    table.set("s1", "http://a:1")
    table.set("s3", "http://c:3")
    assert table.urls({"s1", "s2"}) == ["http://a:1", "http://b:2"]  # trailing "/" dropped
    assert table.urls(set()) == []
    table.set("s2", None)  # re-registered without a piece server
    table.set("s3", "")
    table.set("gone", None)
    assert table.urls({"s1", "s2", "s3"}) == ["http://a:1"]
    table.set("s1", "http://a:10")  # the latest registration wins
    assert table.urls({"s1"}) == ["http://a:10"]


def test_a_node_naming_its_zone_gets_only_that_zones_piece_servers() -> None:
    table = PieceServers()
    table.set("sa", "http://a:1", "zone-a")
    table.set("sb", "http://b:1", "zone-b")
    table.set("s", "http://any:1")  # a seed that names no zone serves every zone
    alive = {"sa", "sb", "s"}
    assert table.urls(alive, "zone-a") == ["http://a:1", "http://any:1"]
    assert table.urls(alive, "zone-c") == ["http://any:1"]
    assert table.urls(alive) == ["http://a:1", "http://any:1", "http://b:1"]


# -- hub access --------------------------------------------------------------------------------------


def test_error_handlers_answer_json() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/denied")
    async def denied() -> None:
        raise ApiError(401, "Unauthorized", "no token")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("x")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/denied")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json() == {"error": "Unauthorized", "detail": "no token"}
        r = c.get("/nowhere")
        assert r.status_code == 404 and r.json() == {"error": "NotFound", "detail": "Not Found"}
        r = c.get("/boom")
        assert r.status_code == 500 and r.json()["error"] == "Internal"


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/announce/djF8bi0xfDAwfG5vZGV8MQ.c2ln", "/announce/<ticket>"),
        ("/scrape/djF8bi0xfDAwfG5vZGV8MQ.c2ln", "/scrape/<ticket>"),
        ("/announce/junk", "/announce/<ticket>"),
        ("/announce", "/announce"),
        ("/api/v1/jobs", "/api/v1/jobs"),
    ],
)
def test_request_paths_lose_their_ticket(path: str, logged: str) -> None:
    assert redact_path(path) == logged
