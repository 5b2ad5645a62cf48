"""A whole hfbt deployment as local subprocesses on 127.0.0.1: origin, tracker, seed, agents.

Used by `hfbt demo`, the end-to-end tests and the benchmarks, so all three start the real
processes the same way. Every process gets free ports, its own folder and a log file; stop()
(also on error, via the context manager) terminates them all.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from hfbt.config import SECRET_NODE_TOKEN, SECRET_OPERATOR_TOKEN, SECRET_SEED_TOKEN
from hfbt.errors import HfbtError
from hfbt.operator import OperatorClient

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Agent:
    name: str
    url: str
    cache_dir: Path
    state_dir: Path
    proc: Proc
    shim_url: str = ""


class LocalCluster:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.procs: list[Proc] = []
        self.origin_url = ""
        self.tracker_url = ""
        # A closed tracker's role credentials (None: open). They reach the children by environment only:
        # argv is readable by every user of the machine.
        self.operator_token: str | None = None
        self.seed_token: str | None = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- processes -------------------------------------------------------------------------------

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> Proc:
        """Start `python -m hfbt ARGS`; `prefix` wraps it (the benchmark: `ip netns exec NS`)."""
        log = self.workdir / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [*prefix, sys.executable, "-m", "hfbt", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})},
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C on the demo must not reach the children first
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_origin(
        self,
        directory: Path,
        repo: str | None = None,
        repo_type: str = "model",
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> str:
        port = free_port()
        args = ["serve-dir", str(directory), "--port", str(port), *extra]
        if repo:
            args += ["--repo", repo, "--repo-type", repo_type]
        proc = self.spawn("origin", *args, env=env)
        self.origin_url = f"http://127.0.0.1:{port}"
        self._wait_http(proc, f"{self.origin_url}/_hfbt/health")
        return self.origin_url

    def start_tracker(
        self,
        closed: bool = False,
        ref_ttl: float = 0.0,
        extra: tuple[str, ...] = (),
        db: str | None = None,
        name: str = "tracker",
    ) -> str:
        """Start a tracker; the latest one started is `tracker_url`. Replicas share `db` (a
        postgresql:// URL) and the closed cluster's role credentials, made by the first one."""
        port = free_port()
        args = [
            "tracker",
            "--port",
            str(port),
            "--db",
            db or str(self.workdir / "tracker.db"),
            "--ref-ttl",
            str(ref_ttl),
        ]
        if self.origin_url:
            args += ["--origin", self.origin_url]
        env = {}
        if closed:
            if not self.operator_token:
                self.operator_token, self.seed_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            assert self.seed_token
            env = {SECRET_OPERATOR_TOKEN.env: self.operator_token, SECRET_SEED_TOKEN.env: self.seed_token}
        proc = self.spawn(name, *args, *extra, env=env)
        self.tracker_url = f"http://127.0.0.1:{port}"
        self._wait_http(proc, f"{self.tracker_url}/healthz")
        return self.tracker_url

    def start_seed(
        self, name: str = "seed", extra: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> Proc:
        args = [
            "seed",
            "--tracker", self.tracker_url,
            "--origin", self.origin_url,
            "--data-dir", str(self.workdir / name),
            "--seed-id", name,
            "--bt-port", str(free_port()),
            "--bt-host", "127.0.0.1",
            "--piece-port", str(free_port()),
            "--piece-host", "127.0.0.1",
            *extra,
        ]  # fmt: skip
        seed_env = {SECRET_SEED_TOKEN.env: self.seed_token} if self.seed_token else {}
        proc = self.spawn(name, *args, env={**seed_env, **(env or {})})
        self._wait_log(proc, "event=seed_registered")
        return proc

    def start_agent(self, name: str, extra: tuple[str, ...] = ()) -> Agent:
        port = free_port()
        shim_port = free_port()
        cache_dir = self.workdir / name / "hub"
        state_dir = self.workdir / name / "state"
        args = [
            "agent",
            "--tracker", self.tracker_url,
            "--cache-dir", str(cache_dir),
            "--state-dir", str(state_dir),
            "--port", str(port),
            "--bt-port", str(free_port()),
            "--bt-host", "127.0.0.1",
            "--node-name", name,
            "--shim-port", str(shim_port),
            "--origin", self.origin_url or "http://127.0.0.1:9",
            *extra,
        ]  # fmt: skip
        proc = self.spawn(name, *args, env=self.node_env(name))
        url = f"http://127.0.0.1:{port}"
        self._wait_http(proc, f"{url}/v1/health")
        shim_url = f"http://127.0.0.1:{shim_port}"
        self._wait_http(proc, f"{shim_url}/_hfbt/health")
        return Agent(name, url, cache_dir, state_dir, proc, shim_url)

    def node_env(self, name: str) -> dict[str, str]:
        """The environment a node called `name` runs with: on a closed tracker, a fresh identity."""
        if not self.operator_token:
            return {}
        client = OperatorClient(self.tracker_url, self.operator_token)
        try:
            client.revoke_node(name)  # a restarted node of the same name gets a new credential
        except HfbtError:
            pass
        return {SECRET_NODE_TOKEN.env: client.add_node(name)}

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                _signal_group(p.popen, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p.popen, signal.SIGKILL)
                p.popen.wait()
        self.procs.clear()

    # --- readiness -------------------------------------------------------------------------------

    def _wait_http(self, proc: Proc, url: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive(proc)
            try:
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise HfbtError("Startup", f"{proc.name} did not answer at {url}; log: {proc.log}")

    def _wait_log(self, proc: Proc, marker: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive(proc)
            if marker in proc.log_text():
                return
            time.sleep(0.1)
        raise HfbtError("Startup", f"{proc.name} did not start; log: {proc.log}")

    @staticmethod
    def _check_alive(proc: Proc) -> None:
        if proc.popen.poll() is not None:
            tail = "\n".join(proc.log_text().splitlines()[-15:])
            raise HfbtError("Startup", f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass
