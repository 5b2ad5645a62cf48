"""HTTP client for the tracker's registry API (docs/protocol.md), used by seeds and nodes."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import httpx

from hfbt.errors import HfbtError
from hfbt.manifest import Manifest, ManifestError


@dataclass
class ManifestReply:
    status: str  # complete | partial | pending
    manifest: Manifest | None
    job: dict | None


class TrackerClient:
    def __init__(self, url: str, auth_token: str | None = None, node_name: str = "anonymous") -> None:
        headers = {"X-HFBT-Node": node_name, "User-Agent": "hfbt"}
        if auth_token:
            headers["Authorization"] = f"Bearer {auth_token}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(90.0, connect=5.0)
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise HfbtError("TrackerUnreachable", f"cannot reach the tracker at {self.url}: {e}") from None
        if r.status_code >= 400:
            code, detail = "TrackerError", r.text[:300]
            try:
                body = r.json()
                code, detail = body.get("error", code), body.get("detail", detail)
            except ValueError:
                pass
            raise HfbtError(code, detail or f"tracker answered HTTP {r.status_code}")
        return r

    # --- nodes ---

    def manifest(
        self, repo_type: str, repo_id: str, revision: str, wait: float = 20.0, hf_token: str | None = None
    ) -> ManifestReply:
        r = self._call(
            "GET",
            "/api/v1/manifest",
            params={"repo_type": repo_type, "repo_id": repo_id, "revision": revision, "wait": wait},
            headers=_hub_auth(hf_token),
        )
        body = r.json()
        if r.status_code == 202:
            return ManifestReply("pending", None, body.get("job"))
        try:
            return ManifestReply(body["status"], Manifest.from_dict(body["manifest"]), None)
        except (KeyError, ManifestError) as e:
            raise HfbtError("BadManifest", f"the tracker sent a manifest hfbt refuses: {e}") from None

    def torrent(self, info_hash: str, hf_token: str | None = None, pieces: bool = False) -> bytes:
        """pieces: ask for the seeds' piece servers too (the announce URL then says so)."""
        params = {"pieces": "1"} if pieces else None
        path = f"/api/v1/torrents/{info_hash}.torrent"
        return self._call("GET", path, headers=_hub_auth(hf_token), params=params).content

    # --- seeds ---

    def announce_url(self) -> str:
        return self._call("GET", "/api/v1/announce-url").json()["announce"]

    def register_seed(
        self, seed_id: str, origin: str, piece_port: int | None = None, piece_url: str | None = None
    ) -> None:
        body = {"seed_id": seed_id, "origin": origin, "piece_port": piece_port, "piece_url": piece_url}
        self._call("POST", "/api/v1/seeds", json=body)

    def next_job(self, seed_id: str, wait: float = 25.0) -> dict | None:
        r = self._call("POST", f"/api/v1/seeds/{seed_id}/next-job", params={"wait": wait})
        return None if r.status_code == 204 else r.json()

    def register_revision(self, manifest: Manifest, ref: str | None, job_id: str | None) -> Manifest:
        body = {"job_id": job_id, "ref": ref, "manifest": manifest.to_dict()}
        return Manifest.from_dict(self._call("POST", "/api/v1/revisions", json=body).json()["manifest"])

    def register_torrent(self, manifest: Manifest, path: str, torrent: bytes) -> str:
        body = {
            "repo_type": manifest.repo_type,
            "repo_id": manifest.repo_id,
            "commit": manifest.commit,
            "path": path,
            "torrent": base64.b64encode(torrent).decode(),
        }
        return self._call("POST", "/api/v1/torrents", json=body).json()["info_hash"]

    def job_result(
        self, job_id: str, ok: bool, commit: str | None = None, error: str = "", detail: str = ""
    ) -> None:
        body: dict = {"ok": ok}
        if ok:
            body["commit"] = commit
        else:
            body.update(error=error, detail=detail)
        self._call("POST", f"/api/v1/jobs/{job_id}/result", json=body)


def _hub_auth(hf_token: str | None) -> dict[str, str]:
    # The node's own Hub token, for private repos: the tracker checks it with the origin, never stores it.
    return {"X-HF-Token": hf_token} if hf_token else {}
