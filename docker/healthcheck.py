#!/usr/bin/env python3
"""Container healthcheck for every hfbt role (the image's HEALTHCHECK).

Reads the command line of PID 1 (`hfbt <role> [flags]`) and asks that role's HTTP endpoint on
127.0.0.1: the tracker's /healthz, the agent's /v1/health, serve-dir's /_hfbt/health, the seed's
/metrics when --metrics-port / HFBT_METRICS_PORT is set (a seed without it has no HTTP server: its
process being alive is all that can be checked). One-shot commands (prefetch, gc, pull, status,
`tracker node ...`) are healthy while they run. HFBT_HEALTH_URL overrides all of this. Standard library
only.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULTS = {  # role: (port flag, env var, default port, path)
    "tracker": ("--port", "HFBT_TRACKER_PORT", 6969, "/healthz"),
    "agent": ("--port", "HFBT_AGENT_PORT", 6970, "/v1/health"),
    "serve-dir": ("--port", "HFBT_ORIGIN_PORT", 8090, "/_hfbt/health"),
    "seed": ("--metrics-port", "HFBT_METRICS_PORT", 0, "/metrics"),
}
# `hfbt tracker node add|revoke|list`: an operator's one-shot call, not the tracker server.
ONE_SHOT_SUBCOMMANDS = {"tracker": {"node"}}


def command_line() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def health_url(argv: list[str]) -> str | None:
    if os.environ.get("HFBT_HEALTH_URL"):
        return os.environ["HFBT_HEALTH_URL"]
    at = next((i for i, a in enumerate(argv) if a in DEFAULTS), None)
    if at is None:
        return None
    role = argv[at]
    if at + 1 < len(argv) and argv[at + 1] in ONE_SHOT_SUBCOMMANDS.get(role, ()):
        return None
    port_flag, env, default, path = DEFAULTS[role]
    port = int(flag(argv, port_flag) or os.environ.get(env) or default)
    return f"http://127.0.0.1:{port}{path}" if port else None


def main() -> int:
    url = health_url(command_line())
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=4) as r:
            return 0 if r.status < 400 else 1
    except OSError as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
