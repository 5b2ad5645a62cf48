"""`hfbt status`: what a node's agent holds and what the tracker sees, for a human or a script.

collect() asks the agent (GET /v1/status, built by hfbt/agent/report.py) and the tracker, each of which
may be down: the other half is still worth printing; render() draws rich tables. HTTP only.
"""

from __future__ import annotations

import time

import httpx
from rich.console import Console
from rich.table import Table

from hfbt.errors import HfbtError
from hfbt.sizes import human


def _get(client: httpx.Client, url: str) -> dict:
    try:
        r = client.get(url)
    except httpx.HTTPError as e:
        base = url.split("/api/")[0].split("/v1/")[0]
        raise HfbtError("Unreachable", f"cannot reach {base}: {e}") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text[:200])
        except ValueError:
            detail = r.text[:200]
        raise HfbtError("HTTPError", f"{url} answered {r.status_code}: {detail}")
    return r.json()


def collect(agent_url: str | None, tracker_url: str | None, auth_token: str | None) -> dict:
    """{"node": ..., "tracker": ...}; a part that could not be read is null with its "*_error"."""
    out: dict = {"node": None, "node_error": None, "tracker": None, "tracker_error": None}
    headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
    with httpx.Client(timeout=10.0) as client:
        if agent_url:
            try:
                out["node"] = _get(client, f"{agent_url.rstrip('/')}/v1/status")
            except HfbtError as e:
                out["node_error"] = e.message
        else:
            out["node_error"] = "no agent serves this cache (start `hfbt agent`, or pass --agent URL)"
        if tracker_url:
            base = tracker_url.rstrip("/")
            client.headers.update(headers)  # the cluster token goes to the tracker only
            try:
                out["tracker"] = {
                    "url": base,
                    "seeds": _get(client, f"{base}/api/v1/seeds")["seeds"],
                    "swarms": _get(client, f"{base}/api/v1/swarms")["swarms"],
                    "revisions": _get(client, f"{base}/api/v1/revisions")["revisions"],
                    "jobs": _get(client, f"{base}/api/v1/jobs?limit=20")["jobs"],
                }
            except HfbtError as e:
                out["tracker_error"] = e.message
    return out


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    s = max(0.0, now - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def render(report: dict, console: Console) -> None:
    now = time.time()
    node = report.get("node")
    if node is not None:
        info = node.get("node", {})
        rates = node.get("rates", {})
        totals = node.get("totals", {})
        console.print(
            f"[bold]node[/bold] {info.get('name', '?')}  cache {info.get('cache_dir', '?')}"
            f" ({human(info.get('cache_size', 0))})  torrents {totals.get('torrents', 0)}"
            f"  peers {node.get('peers', 0)}  ↓ {human(rates.get('download', 0))}/s"
            f"  ↑ {human(rates.get('upload', 0))}/s  (sent {human(totals.get('uploaded', 0))},"
            f" received {human(totals.get('downloaded', 0))})",
            soft_wrap=True,
        )
        table = Table(title="cache", title_justify="left")
        for col, just in (("repo", "left"), ("revision", "left"), ("refs", "left"), ("files", "right")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for col in ("size", "seeding", "last used"):
            table.add_column(col, justify="right")
        for repo in node.get("repos", []):
            name = f"{repo['repo_type']}/{repo['repo_id']}"
            for rev in repo["revisions"]:
                table.add_row(
                    name,
                    rev["commit"][:12],
                    ", ".join(rev["refs"]) or "-",
                    str(rev["files"]),
                    human(rev["size"]),
                    f"{rev['seeding']}/{rev['blobs']}",
                    _ago(rev["last_access"], now),
                )
                name = ""
        console.print(table)
        if node.get("pulls"):
            pulls = Table(title="pulls in progress", title_justify="left")
            for col in ("repo", "revision", "state", "done", "files", "rate"):
                pulls.add_column(col)
            for p in node["pulls"]:
                pct = f"{100 * p['done'] / p['total']:.0f}%" if p.get("total") else "-"
                pulls.add_row(
                    f"{p['repo_type']}/{p['repo_id']}",
                    p["revision"],
                    p["state"],
                    f"{pct} of {human(p['total'] or 0)}",
                    f"{p['files_done']}/{p['files_total'] or '?'}",
                    f"{human(p['rate'])}/s",
                )
            console.print(pulls)
    else:
        console.print(f"[yellow]node: {report.get('node_error')}[/yellow]")
    tracker = report.get("tracker")
    if tracker is None:
        if report.get("tracker_error"):
            console.print(f"[yellow]tracker: {report['tracker_error']}[/yellow]")
        return
    swarms = tracker["swarms"]
    console.print(
        f"[bold]tracker[/bold] {tracker['url']}  swarms {len(swarms)}"
        f"  seeders {sum(s['seeders'] for s in swarms)}  leechers {sum(s['leechers'] for s in swarms)}"
    )
    seeds = Table(title="seeds", title_justify="left")
    for col in ("seed", "origin", "alive", "last seen"):
        seeds.add_column(col)
    for s in tracker["seeds"]:
        alive = "yes" if s["alive"] else "no"
        seeds.add_row(s["seed_id"], s["origin"] or "-", alive, _ago(s["last_seen"], now))
    console.print(seeds)
    revs = Table(title="revisions", title_justify="left")
    for col in ("repo", "revision", "refs", "complete"):
        revs.add_column(col)
    for r in tracker["revisions"]:
        revs.add_row(
            f"{r['repo_type']}/{r['repo_id']}",
            r["commit"][:12],
            ", ".join(r["refs"]) or "-",
            "yes" if r["complete"] else "no",
        )
    console.print(revs)
    active = [j for j in tracker["jobs"] if j["state"] in ("queued", "running", "failed")][:10]
    if active:
        jobs = Table(title="mirror jobs (active and failed, newest first)", title_justify="left")
        for col in ("repo", "revision", "state", "seed", "updated", "detail"):
            jobs.add_column(col)
        for j in active:
            jobs.add_row(
                f"{j['repo_type']}/{j['repo_id']}",
                j["revision"],
                j["state"],
                j["seed_id"] or "-",
                _ago(j["updated"], now),
                (j.get("detail") or "")[:60],
            )
        console.print(jobs)
