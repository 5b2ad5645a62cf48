"""Helpers the benchmark runs inside an endpoint's namespace (`python -m bench.node ...`).

Each prints JSON lines on stdout. `pull` and `http` start, get ready (imports, agent health), print
{"event": "ready"}, then wait for a line on stdin before they begin, so every node starts at the same
moment whatever its Python start-up cost; they report the wall-clock time (time.time(): one clock for
every namespace on this machine) at which they finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _say(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def _wait_http(url: str, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def cmd_wait(args: argparse.Namespace) -> int:
    ok = _wait_http(args.url, args.timeout)
    _say(event="wait", ok=ok, url=args.url)
    return 0 if ok else 1


def cmd_get(args: argparse.Namespace) -> int:
    import httpx

    r = httpx.request(args.method, args.url, timeout=args.timeout)
    sys.stdout.write(r.text.strip() + "\n")
    return 0 if r.status_code < 400 else 1


def cmd_pull(args: argparse.Namespace) -> int:
    import httpx

    from hfbt.agent.client import AgentClient
    from hfbt.agent.protocol import PullRequest

    if not _wait_http(f"{args.agent}/v1/health", args.timeout):
        _say(event="error", message=f"agent at {args.agent} did not answer")
        return 1
    _say(event="ready")
    if not sys.stdin.readline():
        return 1
    t0 = time.time()
    last = None
    try:
        for ev in AgentClient(args.agent).pull(PullRequest(args.repo, revision=args.revision)):
            if ev.get("event") == "error":
                _say(event="error", message=f"{ev.get('code')}: {ev.get('message')}", t=time.time())
                return 1
            if ev.get("event") == "progress":
                last = ev
    except Exception as e:  # reported to the driver, which fails the run
        _say(event="error", message=f"{type(e).__name__}: {e}", t=time.time())
        return 1
    _say(event="done", t=time.time(), t0=t0, bytes=(last or {}).get("total"))
    # Stay until the driver asks for the agent's counters: by then every node has finished.
    if sys.stdin.readline():
        status = httpx.get(f"{args.agent}/v1/status", timeout=10).json()
        _say(event="stats", **status["totals"])
    return 0


def cmd_embedded(args: argparse.Namespace) -> int:
    """`hfbt pull --agent none`, as a user without an agent runs it: done when the pull logs
    event=pull_done (the snapshot is complete; it lingers after that), its payload totals from
    event=pull_exit (the linger's uploads included)."""
    import re
    import subprocess

    _say(event="ready")
    if not sys.stdin.readline():
        return 1
    t0 = time.time()
    cmd = [
        sys.executable, "-m", "hfbt", "pull", args.repo, "--tracker", args.tracker, "--agent", "none",
        "--cache-dir", args.cache_dir, "--state-dir", args.state_dir, "--node-name", args.node_name,
        "--bt-host", args.bt_host, "--bt-port", str(args.bt_port), "--quiet", "--log-level", "info",
    ]  # fmt: skip
    pull = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert pull.stderr
    done = False
    totals: dict[str, float] = {}
    for line in pull.stderr:
        sys.stderr.write(line)
        if not done and "event=pull_done" in line:
            done = True
            _say(event="done", t=time.time(), t0=t0)
        elif "event=pull_exit" in line:
            fields = re.findall(r"(\w+)=([0-9.]+)\b", line.split("event=pull_exit")[1])
            totals = {k: float(v) for k, v in fields}
    code = pull.wait()
    if code != 0 or not done or not totals:
        why = f"hfbt pull exited {code} (done={done}, totals={bool(totals)})"
        _say(event="error", message=why, t=time.time())
        return 1
    if sys.stdin.readline():
        _say(event="stats", **{k: int(v) if k != "lingered_s" else v for k, v in totals.items()})
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    import os

    os.environ["HF_ENDPOINT"] = args.endpoint
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub import snapshot_download

    _say(event="ready")
    if not sys.stdin.readline():
        return 1
    t0 = time.time()
    try:
        path = snapshot_download(args.repo, revision=args.revision, cache_dir=args.cache_dir)
    except Exception as e:
        _say(event="error", message=f"{type(e).__name__}: {e}", t=time.time())
        return 1
    _say(event="done", t=time.time(), t0=t0, path=path)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.node")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=60)
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("--method", default="GET")
    g.add_argument("--timeout", type=float, default=300)
    pl = sub.add_parser("pull")
    pl.add_argument("--agent", required=True)
    pl.add_argument("--repo", required=True)
    pl.add_argument("--revision", default="main")
    pl.add_argument("--timeout", type=float, default=60)
    e = sub.add_parser("embedded")
    for flag in ("--tracker", "--repo", "--cache-dir", "--state-dir", "--node-name", "--bt-host"):
        e.add_argument(flag, required=True)
    e.add_argument("--bt-port", type=int, required=True)
    h = sub.add_parser("http")
    h.add_argument("--endpoint", required=True)
    h.add_argument("--repo", required=True)
    h.add_argument("--revision", default="main")
    h.add_argument("--cache-dir", required=True)
    args = p.parse_args(argv)
    run = {"wait": cmd_wait, "get": cmd_get, "pull": cmd_pull, "embedded": cmd_embedded, "http": cmd_http}
    return run[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
