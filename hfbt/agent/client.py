"""Talking to a running agent from `hfbt pull` (and the demo)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict

import httpx

from hfbt.agent.node import PullRequest
from hfbt.errors import HfbtError


class AgentClient:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def health(self) -> dict | None:
        try:
            r = httpx.get(f"{self.url}/v1/health", timeout=2.0)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def pull(self, req: PullRequest) -> Iterator[dict]:
        try:
            with httpx.stream(
                "POST", f"{self.url}/v1/pull", json=asdict(req), timeout=httpx.Timeout(None, connect=5)
            ) as r:
                if r.status_code != 200:
                    r.read()
                    body = _json(r.text)
                    raise HfbtError(body.get("error", "AgentError"), body.get("detail", r.text[:200]))
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as e:
            raise HfbtError("AgentUnreachable", f"lost the agent at {self.url}: {e}") from None


def _json(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}
