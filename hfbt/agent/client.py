"""Talking to a running agent over its local API: `hfbt pull`, `hfbt gc`, `hfbt status`, the demo.

HTTP only: importing this module loads no libtorrent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx

from hfbt.agent.protocol import PullRequest
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
                "POST", f"{self.url}/v1/pull", json=req.to_json(), timeout=httpx.Timeout(None, connect=5)
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


def local_agent(cache_dir: Path, agent_url: str | None, required: bool) -> str | None:
    """The agent serving this cache, if one answers at agent_url; else None, or an error if required."""
    if not agent_url:
        return None
    health = AgentClient(agent_url).health()
    if health and Path(health["cache_dir"]).resolve() == cache_dir.resolve():
        return agent_url.rstrip("/")
    if required:
        why = "is not reachable" if not health else f"serves another cache ({health['cache_dir']})"
        raise HfbtError("AgentUnreachable", f"the agent at {agent_url} {why}")
    return None


def _json(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}
