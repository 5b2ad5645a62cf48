"""`hfbt prefetch`: pull a list of repos ahead of time (cron / systemd timer), so jobs find them cached.

    tracker = "http://ctl:6969"        # optional; else --tracker / HFBT_TRACKER
    [[repo]]
    id = "org/model"
    type = "model"                     # optional, default model
    revision = "main"                  # optional, default main
    include = ["*.safetensors", "*.json"]   # optional
    exclude = []                       # optional
    pin = true                         # optional: hfbt gc never evicts it

Each entry goes through hfbt.pull.run_pull (the node's agent when it serves this cache, else an embedded
session): a revision that is already complete costs one tracker request and moves nothing, so there is
no separate "is it complete" check to get wrong. Entries run one after the other and a failing one does
not stop the rest. The node's maintenance lock (hfbt.nodelock) makes a second prefetch, or a gc, exit at
once instead of piling up behind a long first one. Pins are recorded in the state dir (hfbt.pins).
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hfbt import cache, pins
from hfbt.agent.protocol import PullRequest
from hfbt.config import AGENT_AUTO, DEFAULT_TRACKER, NodeConfig
from hfbt.errors import HfbtError
from hfbt.pull import run_pull

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger("hfbt.prefetch")

_ENTRY_KEYS = {"id", "type", "revision", "include", "exclude", "pin"}
_TOP_KEYS = {"tracker", "repo"}


@dataclass(frozen=True)
class Entry:
    id: str
    type: str = "model"
    revision: str = "main"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pin: bool = False

    @property
    def label(self) -> str:
        return f"{self.type}/{self.id}@{self.revision}"

    def request(self, timeout: float | None, token: str | None) -> PullRequest:
        return PullRequest(self.id, self.type, self.revision, self.include, self.exclude, timeout, token)


@dataclass(frozen=True)
class PrefetchFile:
    path: Path
    tracker: str | None
    repos: tuple[Entry, ...]


@dataclass(frozen=True)
class Outcome:
    entry: Entry
    result: str  # "pulled" | "complete" | "failed"
    seconds: float
    bytes: int = 0  # bytes of blobs that were not in this repo's cache folder before
    commit: str | None = None
    code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result != "failed"


# --- the file (pure apart from reading it) ------------------------------------------------------


def load(path: Path) -> PrefetchFile:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise HfbtError("BadConfig", f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise HfbtError("BadConfig", f"{path} is not valid TOML: {e}") from None
    return parse(raw, path)


def parse(raw: dict, path: Path) -> PrefetchFile:
    """Check every key and type: a typo ("revison") must fail loudly, not prefetch main silently."""
    where = str(path)
    if unknown := set(raw) - _TOP_KEYS:
        raise HfbtError("BadConfig", f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    tracker = raw.get("tracker")
    if tracker is not None and not (isinstance(tracker, str) and re.match(r"^https?://", tracker)):
        raise HfbtError("BadConfig", f"{where}: tracker must be an http(s) URL")
    repos = raw.get("repo", [])
    if not isinstance(repos, list) or not repos:
        raise HfbtError("BadConfig", f"{where}: no [[repo]] entries")
    entries: list[Entry] = []
    for i, item in enumerate(repos, 1):
        at = f"{where}: [[repo]] #{i}"
        if not isinstance(item, dict):
            raise HfbtError("BadConfig", f"{at} is not a table")
        if unknown := set(item) - _ENTRY_KEYS:
            raise HfbtError("BadConfig", f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(item.get("id"), str):
            raise HfbtError("BadConfig", f'{at}: id ("org/name") is required')
        for key in ("type", "revision"):
            if key in item and not isinstance(item[key], str):
                raise HfbtError("BadConfig", f"{at}: {key} must be a string")
        for key in ("include", "exclude"):
            value = item.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise HfbtError("BadConfig", f"{at}: {key} must be a list of glob strings")
        if not isinstance(item.get("pin", False), bool):
            raise HfbtError("BadConfig", f"{at}: pin must be true or false")
        entry = Entry(
            id=item["id"],
            type=item.get("type", "model"),
            revision=item.get("revision", "main"),
            include=tuple(item.get("include", ())),
            exclude=tuple(item.get("exclude", ())),
            pin=item.get("pin", False),
        )
        try:
            entry.request(None, None).validate()
        except HfbtError as e:
            raise HfbtError("BadConfig", f"{at}: {e.message}") from None
        entries.append(entry)
    return PrefetchFile(path, tracker, tuple(entries))


# --- cron ---------------------------------------------------------------------------------------

_CRON_MACROS = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually", "@reboot"}
_CRON_FIELD = re.compile(r"^[A-Za-z0-9*/,-]+$")


def cron_line(schedule: str, argv: list[str]) -> str:
    """The crontab line running `argv` on `schedule`, its output to syslog (cron would mail it)."""
    fields = schedule.split()
    if not (
        (len(fields) == 1 and fields[0] in _CRON_MACROS)
        or (len(fields) == 5 and all(_CRON_FIELD.match(f) for f in fields))
    ):
        raise HfbtError(
            "BadRequest", f"{schedule!r} is not a cron schedule: five fields, e.g. '*/15 * * * *'"
        )
    return f"{' '.join(fields)} {shlex.join(argv)} 2>&1 | logger -t hfbt-prefetch"


def hfbt_argv() -> list[str]:
    """How cron should start this hfbt: the console script if that is what runs, else python -m hfbt."""
    exe = Path(sys.argv[0])
    if exe.name == "hfbt" and exe.exists():
        return [str(exe.resolve())]
    return [sys.executable, "-m", "hfbt"]


def cron_argv(
    config_path: Path,
    spec: PrefetchFile,
    tracker: str = DEFAULT_TRACKER,
    cache_dir: Path | None = None,
    state_dir: Path | None = None,
    agent: str = AGENT_AUTO,
    node_name: str | None = None,
) -> list[str]:
    """The `hfbt prefetch` command line cron should run: this run's non-default flags, paths absolute
    (cron starts elsewhere). Tokens stay in the environment, never in a crontab."""
    argv = [*hfbt_argv(), "prefetch", "--config", str(config_path.expanduser().resolve())]
    if tracker != DEFAULT_TRACKER and not spec.tracker:  # the file's own tracker wins anyway
        argv += ["--tracker", tracker]
    for flag, value in (("--cache-dir", cache_dir), ("--state-dir", state_dir)):
        if value is not None:
            argv += [flag, str(value.expanduser().resolve())]
    if agent != AGENT_AUTO:
        argv += ["--agent", agent]
    if node_name:
        argv += ["--node-name", node_name]
    return argv


# --- running it ---------------------------------------------------------------------------------


@dataclass
class PrefetchRun:
    cfg: NodeConfig
    agent_url: str | None
    agent_required: bool = False
    timeout: float | None = None  # per repo
    token: str | None = field(default=None, repr=False)
    linger_s: float = 0.0  # embedded pulls: serve this long after, while other nodes ask (hfbt.pull)


def run(spec: PrefetchFile, run: PrefetchRun) -> list[Outcome]:
    """Pull every entry (caller holds the node's maintenance lock), then record this file's pins."""
    outcomes = [_one(entry, run) for entry in spec.repos]
    _record_pins(spec, run.cfg.state_dir, outcomes)
    return outcomes


def _one(entry: Entry, run: PrefetchRun) -> Outcome:
    repo = cache.repo_dir(run.cfg.cache_dir, entry.type, entry.id)
    before = _blob_sizes(repo)
    t0 = time.monotonic()
    try:
        snap = run_pull(
            run.cfg,
            entry.request(run.timeout, run.token),
            run.agent_url,
            lambda _ev: None,
            agent_required=run.agent_required,
            linger_s=run.linger_s,
        )
    except HfbtError as e:
        out = Outcome(entry, "failed", time.monotonic() - t0, code=e.code, error=e.message)
        log.warning(
            "event=prefetch repo=%s result=failed seconds=%.1f code=%s detail=%r",
            entry.label,
            out.seconds,
            e.code,
            e.message,
        )
        return out
    after = _blob_sizes(repo)
    moved = sum(size for name, size in after.items() if name not in before)
    out = Outcome(entry, "pulled" if moved else "complete", time.monotonic() - t0, moved, snap.name)
    log.info(
        "event=prefetch repo=%s result=%s commit=%s bytes=%d seconds=%.1f",
        entry.label,
        out.result,
        snap.name[:12],
        moved,
        out.seconds,
    )
    return out


def _blob_sizes(repo: Path) -> dict[str, int]:
    """Final blobs only: a partial download under way is not "in the cache"."""
    out: dict[str, int] = {}
    for p in (repo / "blobs").glob("*"):
        if not p.name.endswith((cache.PARTIAL_SUFFIX, ".incomplete")):
            try:
                out[p.name] = p.stat().st_size
            except OSError:
                continue
    return out


def _record_pins(spec: PrefetchFile, state_dir: Path, outcomes: list[Outcome]) -> None:
    # A failed pull keeps what the last run pinned: a flaky tracker must not unpin tomorrow's model.
    path = pins.pin_file(state_dir, spec.path)
    previous = {(p.repo_type, p.repo_id, p.revision): p for p in pins.read_file(path)}
    recorded: list[pins.Pin] = []
    for out in outcomes:
        e = out.entry
        if not e.pin:
            continue
        key = (e.type, e.id, e.revision)
        if out.ok:
            recorded.append(pins.Pin(e.type, e.id, e.revision, out.commit))
        else:
            recorded.append(previous.get(key) or pins.Pin(e.type, e.id, e.revision, None))
    pins.write_file(path, spec.path, recorded)
