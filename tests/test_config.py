"""hfbt.config holds every setting once: the CLI's options are its Settings, every variable --help
shows is declared there and listed in README.md's configuration table, and a variable means one thing."""

from __future__ import annotations

import re
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from hfbt import config as C
from hfbt.cli import app
from hfbt.errors import HfbtError

ROOT = Path(__file__).resolve().parent.parent
CLI = typer.main.get_command(app)  # typer's own click: compare by duck type, not isinstance


def declared() -> list[C.Setting]:
    return [v for v in vars(C).values() if isinstance(v, C.Setting)]


def secrets() -> list[C.Secret]:
    return [v for v in vars(C).values() if isinstance(v, C.Secret)]


def cli_options() -> list[tuple[str, Any]]:
    return [
        (name, p) for name, cmd in CLI.commands.items() for p in cmd.params if p.param_type_name == "option"
    ]


def names(s: C.Setting) -> set[str]:
    return {*s.flag.split("/"), *([s.short] if s.short else [])}


def help_texts() -> dict[str, str]:
    runner = CliRunner()
    out = {}
    for name in ("", *CLI.commands):
        r = runner.invoke(app, [*([name] if name else []), "--help"], env={"COLUMNS": "400"})
        assert r.exit_code == 0, r.output
        out[name or "hfbt"] = r.output
    return out


def readme_table_vars() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Configuration", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return {v for row in rows for v in re.findall(r"`((?:HFBT_[A-Z0-9_]+)|HF_TOKEN)`", row)}


def test_every_cli_option_is_a_setting_of_config() -> None:
    settings = declared()
    for command, p in cli_options():
        if p.name == "help":
            continue
        opts = {*p.opts, *p.secondary_opts}
        match = [s for s in settings if names(s) == opts and s.env == p.envvar and s.help == p.help]
        assert match, f"hfbt {command} {'/'.join(sorted(opts))}: no Setting in hfbt/config.py matches"


def test_every_setting_is_used_and_declared_once() -> None:
    settings = declared()
    assert len(set(settings)) == len(settings), "two constants declare the same Setting"
    used = {(frozenset({*p.opts, *p.secondary_opts}), p.envvar, p.help) for _, p in cli_options()}
    unused = [s for s in settings if (frozenset(names(s)), s.env, s.help) not in used]
    assert unused == []


def test_every_variable_in_help_is_declared_and_in_the_readme() -> None:
    shown: set[str] = set()
    for text in help_texts().values():
        shown.update(re.findall(r"\bHFBT_[A-Z0-9_]+\b", text))
        shown.update(re.findall(r"env var: ([A-Z][A-Z0-9_]*)", text))
    # The help scan sees every variable the options read (so a wrapped line hides none).
    assert {p.envvar for _, p in cli_options() if p.envvar} <= shown
    shown |= {s.env for s in secrets()}
    assert shown - {s.env for s in declared()} - {s.env for s in secrets()} == set(), "not declared"
    assert shown - readme_table_vars() == set(), "missing from README.md's configuration table"


def test_no_credential_is_a_flag() -> None:
    """Credentials come from the environment (or a *_FILE): a flag would put them in argv."""
    for command, p in cli_options():
        assert not (p.envvar or "").startswith("HFBT_") or not p.envvar.endswith("_TOKEN"), (command, p.opts)
    assert {s.env for s in secrets()} == {
        "HFBT_OPERATOR_TOKEN",
        "HFBT_SEED_TOKEN",
        "HFBT_NODE_TOKEN",
        "HFBT_ORIGIN_TOKEN",
        "HFBT_REDIS_PASSWORD",
        "HFBT_PG_PASSWORD",
    }


def test_a_secret_comes_from_its_variable_or_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = C.SECRET_NODE_TOKEN
    monkeypatch.delenv(s.env, raising=False)
    monkeypatch.delenv(s.env + "_FILE", raising=False)
    assert C.read_secret(s) is None
    f = tmp_path / "token"
    f.write_text("hfbtn_a.b\n")
    f.chmod(0o600)
    monkeypatch.setenv(s.env + "_FILE", str(f))
    assert C.read_secret(s) == "hfbtn_a.b"
    f.chmod(0o644)
    with pytest.raises(HfbtError, match="chmod 600"):
        C.read_secret(s)
    monkeypatch.setenv(s.env + "_FILE", str(tmp_path / "missing"))
    with pytest.raises(HfbtError, match="cannot read"):
        C.read_secret(s)
    monkeypatch.setenv(s.env, "from-env")
    assert C.read_secret(s) == "from-env"
    assert C.node_config(node_token="hfbtn_gpu-3.secret").node_name == "gpu-3"


def test_a_variable_means_one_thing_unless_deliberately_shared() -> None:
    by_env: dict[str, list[C.Setting]] = defaultdict(list)
    for s in declared():
        if s.env:
            by_env[s.env].append(s)
    for env, group in by_env.items():
        assert len({s.flag for s in group}) == 1, f"{env} is read by different flags: {group}"
        if len(group) > 1:
            assert env in C.SHARED_ENV, f"{env} has {len(group)} Settings: share it deliberately or rename"
    assert {env for env in C.SHARED_ENV if len(by_env[env]) < 2} == set(), "stale SHARED_ENV entry"
    for command, cmd in CLI.commands.items():
        envs = [p.envvar for p in cmd.params if getattr(p, "envvar", None)]
        assert len(envs) == len(set(envs)), f"hfbt {command} reads one variable for two options"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", (C.DEFAULT_AGENT, False)),
        ("none", (None, False)),
        ("http://10.0.0.7:6970", ("http://10.0.0.7:6970", True)),
        (C.DEFAULT_AGENT, (C.DEFAULT_AGENT, True)),  # named explicitly: required, unlike auto
    ],
)
def test_agent_choice(value: str, expected: tuple[str | None, bool]) -> None:
    assert C.agent_choice(value) == expected


def test_node_config_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = C.node_config()
    assert cfg.cache_dir == (tmp_path / "hub").resolve()
    assert cfg.state_dir == (tmp_path / ".hfbt-hub").resolve()
    assert cfg.node_name == socket.gethostname() and cfg.tracker == C.DEFAULT_TRACKER
    assert cfg.swarm == C.SwarmConfig() and cfg.stall_timeout == C.STALL_TIMEOUT_S
    given = C.node_config("http://t:1", tmp_path / "c", tmp_path / "s", node_name="n", stall_timeout=0)
    assert (given.cache_dir, given.state_dir, given.node_name) == (tmp_path / "c", tmp_path / "s", "n")


def test_parse_lt_settings() -> None:
    assert C.parse_lt_settings(None) == {}
    parsed = C.parse_lt_settings(["a=1", " b = true", "c=FALSE", "d=x=y", "e="])
    assert parsed == {"a": 1, "b": True, "c": False, "d": "x=y", "e": ""}
    for bad in ("novalue", "=3"):
        with pytest.raises(HfbtError, match="NAME=VALUE"):
            C.parse_lt_settings([bad])


def test_disk_io_names_a_known_backend() -> None:
    assert C.check_disk_io("posix") == "posix"
    with pytest.raises(HfbtError, match="--disk-io wants one of"):
        C.check_disk_io("posix_disk_io_constructor")  # the bindings would take it silently as default
