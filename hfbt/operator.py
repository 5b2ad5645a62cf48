"""The operator's client: node identities on the tracker (`hfbt tracker node add|revoke|list`)."""

from __future__ import annotations

import httpx

from hfbt.errors import HfbtError


class OperatorClient:
    def __init__(self, url: str, operator_token: str) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {operator_token}", "User-Agent": "hfbt"},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    def _call(self, method: str, path: str, **kw) -> dict:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise HfbtError("TrackerUnreachable", f"cannot reach the tracker at {self.url}: {e}") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code >= 400:
            raise HfbtError(body.get("error", "TrackerError"), body.get("detail", f"HTTP {r.status_code}"))
        return body

    def add_node(self, name: str) -> str:
        """The new node's token: shown once, the tracker keeps only its hash."""
        return self._call("POST", "/api/v1/nodes", json={"name": name})["token"]

    def revoke_node(self, name: str) -> None:
        self._call("DELETE", f"/api/v1/nodes/{name}")

    def list_nodes(self) -> list[dict]:
        return self._call("GET", "/api/v1/nodes")["nodes"]
