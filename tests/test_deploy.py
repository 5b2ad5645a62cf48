"""docker/ and deploy/ checked by construction: no Docker engine or Kubernetes cluster runs here.

YAML parses; every hfbt command, flag and HFBT_* variable the files use exists in the CLI; images are
pinned and run as non-root with healthchecks; the embedded prefetch configs load. Credentials: none
ships in a file, none is on a command line, and every process gets exactly the role credentials it
needs (tracker: operator + seed; seed: seed; agent, and a pull or prefetch it does not hand to an
agent: the node's own; `tracker node ...`: operator). The agent's unauthenticated API never binds
beyond loopback. Where the tool is installed, `docker compose config` (or docker-compose), `kubectl
kustomize` and `systemd-analyze verify` run too (skipped otherwise; docs/operations.md says what ran).
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from hfbt import config as C
from hfbt.cli import app
from hfbt.prefetch import parse

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKER, K8S, SYSTEMD = ROOT / "docker", ROOT / "deploy" / "k8s", ROOT / "deploy" / "systemd"
OPERATIONS = ROOT / "docs" / "operations.md"
CLI = typer.main.get_command(app)

OPERATOR, SEED, NODE = (C.SECRET_OPERATOR_TOKEN.env, C.SECRET_SEED_TOKEN.env, C.SECRET_NODE_TOKEN.env)
ORIGIN = C.SECRET_ORIGIN_TOKEN.env  # serve-dir's, a test origin's: no deployment sets it
REDIS = C.SECRET_REDIS_PASSWORD.env  # a tracker's with --peer-store redis://
PG = C.SECRET_PG_PASSWORD.env  # a tracker's with --db postgresql://
SECRETS = {s.env for s in vars(C).values() if isinstance(s, C.Secret)}
assert SECRETS == {OPERATOR, SEED, NODE, ORIGIN, REDIS, PG}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# What the compose file is validated with: any value will do, they are only interpolated.
COMPOSE_TEST_ENV = {
    OPERATOR: "compose-config-operator",
    SEED: "compose-config-seed",
    PG: "compose-config-pg",
    REDIS: "compose-config-redis",
}
# compose's stock-image services and the one credential each holds: its own password.
COMPOSE_STORES = {"postgres": {PG}, "redis": {REDIS}}


# --- the CLI ------------------------------------------------------------------------------------


def _walk(cmd: Any) -> list[Any]:
    out = [cmd]
    for sub in (getattr(cmd, "commands", None) or {}).values():
        out += _walk(sub)
    return out


def resolve(args: list[str]) -> tuple[Any, list[str], list[str]]:
    """(the click command, its path, the arguments left) for `hfbt ARGS` (`tracker node add x` included)."""
    cmd, path, rest = CLI, [], list(args)
    while rest and rest[0] in (getattr(cmd, "commands", None) or {}):
        path.append(rest[0])
        cmd = cmd.commands[rest.pop(0)]
    return cmd, path, rest


def check_hfbt_args(args: list[str], where: str) -> list[str]:
    """`hfbt <command> [<subcommand>] --flag value ...` uses a real command and only flags it has;
    returns the command path, e.g. ["tracker", "node", "add"]."""
    cmd, path, rest = resolve(args)
    assert path, f"{where}: no hfbt command {args[:1]}"
    if getattr(cmd, "commands", None) and not getattr(cmd, "invoke_without_command", False):
        raise AssertionError(f"{where}: `hfbt {' '.join(path)}` needs a subcommand")
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for a in rest:
        if a.startswith("--"):
            assert a.split("=", 1)[0] in known, f"{where}: hfbt {' '.join(path)} has no {a}"
    return path


def env_vars() -> set[str]:
    out = set()
    for cmd in _walk(CLI):
        for p in cmd.params:
            env = getattr(p, "envvar", None)
            out.update([env] if isinstance(env, str) else env or [])
    return out


def hfbt_invocations(text: str) -> list[list[str]]:
    """`hfbt ...` command lines inside a shell snippet (up to ;, &, | or the end)."""
    found = []
    for m in re.finditer(r"(?:^|[\s;&|(])(?:/opt/hfbt/bin/)?hfbt\s+([^;&|\n]+)", text):
        found.append(m.group(1).split())
    return found


# Read by docker/healthcheck.py, not the CLI; credentials are read by hfbt.config.read_secret, never
# flags, from VAR or VAR_FILE.
ALLOWED_EXTRA_ENV = {"HFBT_HEALTH_URL"} | SECRETS | {s + "_FILE" for s in SECRETS}


def check_env_names(text: str, where: str) -> None:
    for name in set(re.findall(r"\bHFBT_[A-Z_]+\b", text)):
        assert name in env_vars() | ALLOWED_EXTRA_ENV, f"{where}: {name} is no hfbt setting"


def flag_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def needed_credentials(args: list[str]) -> set[str]:
    """The role credentials `hfbt ARGS` needs (docs/operations.md, "Identities and credentials")."""
    _, path, rest = resolve(args)
    command = " ".join(path)
    if command == "tracker":
        shared = {REDIS} if (flag_value(rest, "--peer-store") or "").startswith("redis") else set()
        shared |= {PG} if (flag_value(rest, "--db") or "").startswith("postgres") else set()
        return {OPERATOR, SEED} | shared
    if command.startswith("tracker node"):
        return {OPERATOR}
    if command == "seed":
        return {SEED}
    if command == "agent":
        return {NODE}
    if command in ("pull", "prefetch"):
        # Handed to the agent it names (no embedded fallback): the agent pulls with its own identity.
        agent = flag_value(rest, "--agent")
        return set() if agent not in (None, C.AGENT_AUTO, C.AGENT_NONE) else {NODE}
    if command == "status":
        return set() if flag_value(rest, "--tracker") == "none" else {OPERATOR}
    return set()  # serve-dir, gc, demo


def given_credentials(names: set[str]) -> set[str]:
    """The role credentials an environment supplies, as VAR or VAR_FILE."""
    return {s for s in SECRETS if s in names or s + "_FILE" in names}


# Looks like a credential, on a command line: a node token, a Hub token, long hex, the old defaults.
CREDENTIAL_LIKE = re.compile(
    r"hfbtn_\w|\bhf_[A-Za-z0-9]{8,}|\b[0-9a-fA-F]{32,}\b|change-?me|cluster-token|Bearer\s"
    # a credential flag (there is none: credentials are never flags; the Hub token goes as HF_TOKEN)
    r"|--[\w-]*token\b"
    # a credential expanded into argv at run time: "$HFBT_SEED_TOKEN", "$(cat .../node-token)"
    r"|\$\{?\w*TOKEN|\$\(\s*cat\b|`\s*cat\b",
    re.IGNORECASE,
)


def high_entropy(word: str) -> bool:
    return (
        len(word) >= 24
        and re.fullmatch(r"[A-Za-z0-9_\-+=]+", word) is not None
        and bool(re.search(r"\d", word))
        and bool(re.search(r"[a-z]", word))
        and bool(re.search(r"[A-Z]", word))
    )


def check_no_credential_in_argv(argv: list[str], where: str) -> None:
    for arg in argv:
        m = CREDENTIAL_LIKE.search(arg)
        assert m is None, f"{where}: credential-like {m.group(0)!r} on a command line"
        for word in re.split(r"[\s'\"=:,;()\[\]]+", arg):
            assert not high_entropy(word), f"{where}: {word[:8]}… looks like a secret on a command line"


def test_the_credential_checks_catch_what_they_are_for() -> None:
    for bad in (
        ["agent", "--auth-token", "x"],
        ["seed", "--token", "hf_abcdefghijklmnop"],
        ["agent", "HFBT_NODE_TOKEN=hfbtn_n1.abc"],
        ["sh", "-c", 'HFBT_SEED_TOKEN="$(cat /run/secrets/hfbt/seed-token)" hfbt seed'],
        ["sh", "-c", "hfbt seed --tracker ${HFBT_SEED_TOKEN}"],
        ["tracker", "demo-cluster-token-change-me"],
        ["x", "Zr4mP0qLx8vT2nW6yB1cK9dH3sJ7fG5a"],
        ["x", "0123456789abcdef0123456789abcdef"],
    ):
        with pytest.raises(AssertionError):
            check_no_credential_in_argv(bad, "t")
    check_no_credential_in_argv(
        ["agent", "--tracker", "http://hfbt-tracker.hfbt.svc:6969", "--cache-dir", "/cache/hub"], "t"
    )
    assert needed_credentials(["tracker", "--port", "6969"]) == {OPERATOR, SEED}
    assert needed_credentials(["tracker", "node", "add", "n1"]) == {OPERATOR}
    assert needed_credentials(["pull", "r", "--agent", "http://127.0.0.1:6970"]) == set()
    assert needed_credentials(["prefetch", "--config", "p.toml"]) == {NODE}
    assert given_credentials({"HFBT_NODE_TOKEN_FILE", "HFBT_LOG_LEVEL"}) == {NODE}
    for args, env in (
        (["agent", "--host", "0.0.0.0"], {}),
        (["agent"], {"HFBT_HOST": "0.0.0.0"}),
        (["agent"], {}),
    ):
        with pytest.raises(AssertionError):
            check_agent_host(args, env, "t")
    check_agent_host(["agent", "--host", "127.0.0.1"], {}, "t")


def check_agent_host(args: list[str], env: dict[str, str], where: str) -> None:
    """The agent's control API has no authentication: it binds loopback, always said explicitly."""
    host = flag_value(args, "--host") or env.get("HFBT_HOST")
    assert host in LOOPBACK, f"{where}: the agent's API binds {host!r}, not loopback only"
    assert env.get("HFBT_HOST", host) in LOOPBACK, f"{where}: HFBT_HOST binds the agent beyond loopback"


# --- docker -------------------------------------------------------------------------------------


def test_dockerfile_is_pinned_non_root_with_healthcheck_and_volumes() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1)), "base image not pinned"
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*hfbt-healthcheck", text, re.M)
    assert re.search(r'^VOLUME \["/data", "/cache"\]$', text, re.M)
    assert 'ENTRYPOINT ["hfbt"]' in text
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    # The credential mount point: the image user's, 0700 (an empty volume mounted there takes both).
    assert "chown 10001:10001 /data /cache /run/secrets/hfbt" in text
    assert "chmod 0700 /run/secrets/hfbt" in text
    # The agent's control API is not advertised: it binds loopback.
    expose = re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()
    assert "6970" not in expose and "6971" not in expose
    assert not re.search(r"(?i)token|secret", re.sub(r"(?m)^#.*$|/run/secrets/hfbt", "", text))
    check_env_names(text, "Dockerfile")


def test_requirements_lock_pins_every_runtime_dependency() -> None:
    lock = {}
    for line in (DOCKER / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            lock[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        if "python_version < '3.11'" in dep:
            continue  # the image runs 3.11
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-")
        assert name in lock, f"{name} missing from docker/requirements.lock"
    assert lock["libtorrent"] == "2.1.1"


def test_healthcheck_asks_the_right_endpoint_per_role(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", DOCKER / "healthcheck.py")
    hc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hc)
    for var in ("HFBT_HEALTH_URL", "HFBT_TRACKER_PORT", "HFBT_AGENT_PORT", "HFBT_METRICS_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert (
        hc.health_url(["/opt/hfbt/bin/hfbt", "tracker", "--port", "7000"]) == "http://127.0.0.1:7000/healthz"
    )
    assert hc.health_url(
        ["/sbin/docker-init", "--", "hfbt", "agent", "--tracker", "http://tracker:6969"]
    ) == ("http://127.0.0.1:6970/v1/health")
    assert hc.health_url(["hfbt", "seed", "--metrics-port=9110"]) == "http://127.0.0.1:9110/metrics"
    assert hc.health_url(["hfbt", "seed"]) is None  # no HTTP server to ask
    assert hc.health_url(["hfbt", "prefetch", "--config", "x"]) is None
    # An operator's one-shot `hfbt tracker node add NAME` is not the tracker server.
    assert hc.health_url(["hfbt", "tracker", "node", "add", "n1", "--tracker", "http://t:6969"]) is None
    monkeypatch.setenv("HFBT_METRICS_PORT", "9200")
    assert hc.health_url(["hfbt", "seed"]) == "http://127.0.0.1:9200/metrics"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: str(v) for k, v in env.items()}


def service_argv(svc: dict) -> list[str]:
    """Everything the container runs: its entrypoint (the image's is `hfbt`) and command."""
    entry = svc.get("entrypoint")
    entry = [entry] if isinstance(entry, str) else entry
    command = svc.get("command") or []
    command = [command] if isinstance(command, str) else command
    return [*(entry or ["hfbt"]), *command]


def service_invocations(svc: dict, where: str) -> list[list[str]]:
    """The hfbt command lines a service runs, each checked against the CLI (none for stock images)."""
    if not svc.get("image", "").startswith("hfbt:"):
        return []
    argv = service_argv(svc)
    found = [argv[1:]] if argv[0] == "hfbt" else [a for arg in argv for a in hfbt_invocations(arg)]
    for args in found:
        check_hfbt_args(args, where)
    return found


def compose_mounts(svc: dict) -> dict[str, tuple[str, bool]]:
    """{container path: (volume, read-only)}."""
    out = {}
    for v in svc.get("volumes", []):
        source, target, *mode = v.split(":")
        out[target] = (source, "ro" in mode)
    return out


def test_compose_runs_every_role_with_real_commands_and_flags() -> None:
    doc = compose()
    services = doc["services"]
    assert {"origin", "tracker", "seed", "agent1", "agent2", "demo"} <= set(services)
    for name in ("tracker", "seed", "agent1", "agent2"):
        svc = services[name]
        assert svc["image"] == "hfbt:0.1.0" and svc["build"]["dockerfile"] == "docker/Dockerfile"
        check_hfbt_args(svc["command"], f"compose {name}")
    assert services["agent1"]["command"][0] == services["agent2"]["command"][0] == "agent"
    assert "http://origin:8090" in services["seed"]["command"]
    assert "serve-dir" in services["origin"]["command"][0]
    for name, svc in services.items():
        service_invocations(svc, f"compose {name}")
    # The demo: both agents pull at once, each from inside its agent's network namespace, and `demo`
    # prints what they hold once both are done.
    pullers = {}
    for name, svc in services.items():
        for args in service_invocations(svc, name):
            if args[0] == "pull":
                pullers[name] = (svc, args)
    assert len(pullers) == 2
    agents_pulled = set()
    for name, (svc, args) in pullers.items():
        agent = svc["network_mode"].removeprefix("service:")
        agents_pulled.add(agent)
        assert flag_value(args, "--agent") == "http://127.0.0.1:6970", name
        assert flag_value(args, "--cache-dir") == "/cache/hub", f"{name}: not the agent's cache path"
        assert svc["depends_on"][agent]["condition"] == "service_healthy"
        assert svc["depends_on"]["seed"]["condition"] == "service_healthy"
        assert svc["restart"] == "no"
    assert agents_pulled == {"agent1", "agent2"}
    assert {services["demo"]["depends_on"][p]["condition"] for p in pullers} == {
        "service_completed_successfully"
    }
    assert services["demo"]["depends_on"].keys() == pullers.keys()
    assert set(doc["volumes"]) >= {"postgres-data", "ticket-key", "seed-data", "agent1-cache", "agent2-cache"}
    # Two tracker replicas on one PostgreSQL and one Redis, signing with one key, both named `tracker`.
    for name in ("tracker", "tracker2"):
        args = services[name]["command"]
        assert flag_value(args, "--db") == "postgresql://hfbt@postgres:5432/hfbt", name
        assert flag_value(args, "--peer-store") == "redis://redis:6379/0", name
        assert compose_mounts(services[name])[posixpath.dirname(flag_value(args, "--ticket-key"))][1]
        assert services[name]["networks"]["default"]["aliases"] == ["tracker"]
    for name in ("seed", "agent1", "agent2"):
        assert all(
            services[name]["depends_on"][d]["condition"].startswith("service_")
            and services[name]["depends_on"][d]["condition"] != "service_started"
            for d in services[name]["depends_on"]
        )
    check_env_names((DOCKER / "compose.yaml").read_text(), "compose.yaml")


def test_compose_ships_no_credential() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    # No default for anything token-like: ${X_TOKEN:-...} / ${X_TOKEN-...} is a credential in the file.
    assert not re.search(r"\$\{\w*TOKEN\w*:?-", text), "a default credential in compose.yaml"
    assert "demo-cluster-token" not in text and "HFBT_AUTH_TOKEN" not in text
    for name, svc in compose()["services"].items():
        for key, value in service_env(svc).items():
            if key.endswith("_FILE"):
                continue
            if key in SECRETS or "TOKEN" in key:
                # Only from the environment of `docker compose`, refused when unset or empty.
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", value), f"{name}: {key}={value!r}"
        check_no_credential_in_argv(service_argv(svc), f"compose {name}")


def test_compose_gives_each_role_exactly_its_credentials() -> None:
    services = compose()["services"]
    roles = {}
    for name, svc in services.items():
        need = COMPOSE_STORES.get(name) or set().union(
            *[needed_credentials(a) for a in service_invocations(svc, name)]
        )
        env = service_env(svc)
        if name in COMPOSE_STORES:
            # A stock image names it its own way (POSTGRES_PASSWORD): what it interpolates is ours.
            env = {m: "" for v in env.values() for m in re.findall(r"\$\{(HFBT_\w+)", v)}
        assert given_credentials(set(env)) == need, f"compose {name}: has {given_credentials(set(env))}"
        roles[name] = need
        for secret in need:
            if secret + "_FILE" in env:
                path = env[secret + "_FILE"]
                mounts = compose_mounts(svc)
                assert posixpath.dirname(path) in mounts, f"{name}: {path} is on no volume"
                assert mounts[posixpath.dirname(path)][1], f"{name}: mount its credential read-only"
    assert roles["tracker"] == roles["tracker2"] == {OPERATOR, SEED, PG, REDIS} and roles["seed"] == {SEED}
    assert roles["agent1"] == roles["agent2"] == {NODE}
    assert {n for n, r in roles.items() if OPERATOR in r} - {"tracker"}, "nobody issues node identities"


def test_compose_issues_each_agent_its_own_identity() -> None:
    services = compose()["services"]
    identity_volumes = set()
    for agent in ("agent1", "agent2"):
        svc = services[agent]
        token_file = service_env(svc)[NODE + "_FILE"]
        volume, read_only = compose_mounts(svc)[posixpath.dirname(token_file)]
        assert read_only and volume not in identity_volumes
        identity_volumes.add(volume)
        # The step that writes it: mounts the same volume at the same place, issues this agent's name.
        (issuer,) = [
            n
            for n, s in services.items()
            if n != agent and volume in {v for v, _ in compose_mounts(s).values()}
        ]
        isvc = services[issuer]
        assert compose_mounts(isvc)[posixpath.dirname(token_file)] == (volume, False)
        assert svc["depends_on"][issuer]["condition"] == "service_completed_successfully"
        assert isvc["depends_on"]["tracker"]["condition"] == "service_healthy"
        assert isvc["restart"] == "no" and "user" not in isvc  # the image's uid 10001 owns the file
        adds = [a for a in service_invocations(isvc, issuer) if a[:3] == ["tracker", "node", "add"]]
        assert len(adds) == 1
        script = " ".join(service_argv(isvc))
        assert "umask 077" in script, f"{issuer}: the token file must be 0600"
        assert token_file.replace("/", "") in script.replace("/", ""), f"{issuer} writes elsewhere"
        # The script's $1 is the agent's name (the agent's own name comes from the token).
        assert adds[0][3] in ('"$$1"', '"$$name"') and service_argv(isvc)[-1] == agent
        assert "--node-name" not in svc["command"]


def test_compose_keeps_the_agent_api_on_loopback() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    services = compose()["services"]
    for name, svc in services.items():
        for args in service_invocations(svc, name):
            if args[0] == "agent":
                check_agent_host(args, service_env(svc), f"compose {name}")
                assert "ports" not in svc, f"compose {name}: publishes agent ports"
            for url in (flag_value(args, "--agent") or "",):
                assert not url.startswith("http") or re.match(r"http://(127\.0\.0\.1|localhost)[:/]", url)
    assert not re.search(r"agent\d*:6970", text), "an agent API reached over the compose network"


def compose_cli() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates() -> None:
    cmd = compose_cli()
    if cmd is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    argv = [*cmd, "-f", str(DOCKER / "compose.yaml"), "config", "-q"]
    r = subprocess.run(argv, capture_output=True, text=True, env={**env, **COMPOSE_TEST_ENV})
    assert r.returncode == 0, r.stderr
    # Without them, compose refuses, naming what to set (no silent default).
    for missing in (OPERATOR, SEED):
        partial = {k: v for k, v in COMPOSE_TEST_ENV.items() if k != missing}
        r = subprocess.run(argv, capture_output=True, text=True, env={**env, **partial})
        assert r.returncode != 0 and f"set {missing}" in r.stderr, r.stderr


# --- kubernetes ---------------------------------------------------------------------------------


def k8s_docs() -> list[dict]:
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for d in yaml.safe_load_all(f.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(d), f"{f.name}: incomplete document"
            assert d["metadata"].get("name"), f"{f.name}: {d['kind']} without a name"
            docs.append(d)
    return docs


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def container_invocations(c: dict, where: str) -> list[list[str]]:
    if c.get("command") is None:
        if "args" not in c:
            return []
        check_hfbt_args(c["args"], where)
        return [c["args"]]
    found = hfbt_invocations(" ".join(c.get("args", [])))
    for args in found:
        check_hfbt_args(args, where)
    return found


def test_kubernetes_manifests_have_every_role_and_run_as_non_root() -> None:
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for want in [
        ("Deployment", "hfbt-tracker"),
        ("Service", "hfbt-tracker"),
        ("StatefulSet", "hfbt-seed"),
        ("DaemonSet", "hfbt-agent"),
        ("CronJob", "hfbt-prefetch"),
    ]:
        assert want in kinds, f"missing {want}"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # Every manifest but the Secret's example: a credential is created, never applied from the repo.
    assert sorted(kustomization["resources"]) == sorted(
        f.name for f in K8S.glob("*.yaml") if f.name not in ("kustomization.yaml", "secret.example.yaml")
    )
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if is_state_store(doc):
            check_state_store(doc, spec, where)
            continue
        assert (
            spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        )
        for c in spec["containers"]:
            assert c["image"] == "hfbt", where
            assert c["resources"]["limits"]["memory"], where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            container_invocations(c, where)
            for env in c.get("env", []):
                check_env_names(env["name"], where)
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            probes = [c.get("readinessProbe") and c.get("livenessProbe") for c in spec["containers"]]
            assert all(probes), f"{where}: containers need readiness and liveness probes"
    agent = next(d for d in docs if d["kind"] == "DaemonSet")
    spec = pod_spec(agent)
    assert spec["hostNetwork"] is True
    assert any(v.get("hostPath") for v in spec["volumes"]), "the agent must use the host's HF cache"
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    cache = next(v for v in spec["volumes"] if v["name"] == "hf-cache")["hostPath"]["path"]
    assert next(v for v in pod_spec(cron)["volumes"] if v["name"] == "hf-cache")["hostPath"]["path"] == (
        cache
    ), "prefetch must see the agent's cache and state dir"


def is_state_store(doc: dict) -> bool:
    """state.yaml's PostgreSQL and Redis: stock images, not hfbt."""
    return doc["metadata"]["labels"].get("app.kubernetes.io/component") == "state"


def check_state_store(doc: dict, spec: dict, where: str) -> None:
    assert spec["securityContext"]["runAsNonRoot"] is True, where
    for c in spec["containers"]:
        assert c["image"].split(":")[0] in ("postgres", "redis"), where
        assert c["resources"]["limits"]["memory"] and c.get("readinessProbe") and c.get("livenessProbe"), (
            where
        )
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
        check_no_credential_in_argv([*c.get("command", []), *c.get("args", [])], where)
        assert not [
            e for e in c.get("env", []) if "PASSWORD" in e["name"] and not e["name"].endswith("_FILE")
        ]
        (vol,) = [v for v in spec["volumes"] if "secret" in v]
        assert vol["secret"]["secretName"] == "hfbt-credentials" and vol["secret"]["defaultMode"] == 0o440
        # Each store gets its own password only.
        assert [i["key"] for i in vol["secret"]["items"]] in (["pg-password"], ["redis-password"]), where


def secret_key(secret: str) -> str:
    """The hfbt-credentials key (secret.example.yaml) of a credential: HFBT_SEED_TOKEN -> seed-token."""
    return secret.removeprefix("HFBT_").lower().replace("_", "-")


def credential_source(spec: dict, c: dict, path: str) -> dict:
    """The volume (and the key or file in it) a container's credential file comes from."""
    for m in c.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if path == mount or posixpath.dirname(path) == mount:
            assert m.get("readOnly") is True, f"{c['name']}: mount {mount} read-only"
            vol = next(v for v in spec["volumes"] if v["name"] == m["name"])
            return {"volume": vol, "file": None if path == mount else posixpath.basename(path)}
    raise AssertionError(f"{c['name']}: {path} is on no volume")


def test_kubernetes_gives_each_role_exactly_its_credentials_as_files() -> None:
    roles = {}
    for doc in k8s_docs():
        spec = pod_spec(doc)
        if spec is None or is_state_store(doc):
            continue
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            check_no_credential_in_argv([*c.get("command", []), *c.get("args", [])], where)
            env = {e["name"]: e for e in c.get("env", [])}
            invocations = container_invocations(c, where)
            need = set().union(*[needed_credentials(a) for a in invocations])
            assert given_credentials(set(env)) == need, f"{where}: has {given_credentials(set(env))}"
            for args in invocations:
                if args[0] == "agent":
                    check_agent_host(args, {k: e.get("value", "") for k, e in env.items()}, where)
                    assert "HFBT_NODE_NAME" not in env, f"{where}: the node's name comes from its credential"
            for secret in need:
                # Files, not values (prefer files): the value is never in the pod spec or the environment.
                assert secret not in env and "value" in env[secret + "_FILE"], where
                src = credential_source(spec, c, env[secret + "_FILE"]["value"])
                vol = src["volume"]
                if secret == NODE:
                    # One identity per node: a file on the node, never a Secret every node shares.
                    assert vol.get("hostPath", {}).get("type") == "File", f"{where}: {vol}"
                    assert vol["hostPath"]["path"] == "/etc/hfbt/node-token"
                else:
                    s = vol["secret"]
                    assert s["secretName"] == "hfbt-credentials" and s["defaultMode"] == 0o440, where
                    assert not s.get("optional"), f"{where}: a missing credential must stop the pod"
                    assert {"key": secret_key(secret), "path": src["file"]} in s["items"], where
                    assert spec["securityContext"]["fsGroup"] == 10001, f"{where}: 0440 files need fsGroup"
                    # Every item is one this role needs: a pod gets only its own role's credentials
                    # (and the tracker replicas their one shared ticket-signing key).
                    key_file = {"ticket-key"} if "--ticket-key" in sum(invocations, []) else set()
                    assert {i["key"] for i in s["items"]} <= {secret_key(n) for n in need} | key_file, where
            roles[doc["metadata"]["name"]] = roles.get(doc["metadata"]["name"], set()) | need
    assert roles["hfbt-tracker"] == {OPERATOR, SEED, REDIS, PG}
    assert roles["hfbt-seed"] == {SEED}
    assert roles["hfbt-agent"] == {NODE}
    assert roles["hfbt-prefetch"] == set()  # it hands every pull to the node's agent (--agent URL)


def test_kubernetes_tracker_replicas_share_their_state_and_one_ticket_key() -> None:
    docs = k8s_docs()
    tracker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "hfbt-tracker")
    assert tracker["spec"]["replicas"] >= 2 and tracker["spec"]["strategy"]["type"] == "RollingUpdate"
    spec = pod_spec(tracker)
    (c,) = spec["containers"]
    args = c["args"]
    db, store, key = (flag_value(args, f) for f in ("--db", "--peer-store", "--ticket-key"))
    assert db.startswith("postgresql://") and "@" in db and ":" not in db.split("//")[1].split("@")[0]
    assert store.startswith("redis://") and "@" not in store
    # The key every replica signs with comes from the Secret (read-only), not a per-pod volume.
    src = credential_source(spec, c, key)
    assert src["volume"]["secret"]["secretName"] == "hfbt-credentials"
    assert {"key": "ticket-key", "path": src["file"]} in src["volume"]["secret"]["items"]
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], "replicas keep no state"
    # The stores they name exist, each behind a Service of that name.
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert {"hfbt-postgres", "hfbt-redis"} <= services
    assert "hfbt-postgres.hfbt.svc" in db and "hfbt-redis.hfbt.svc" in store


def test_secret_example_holds_no_credential() -> None:
    (secret,) = [d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text())]
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "hfbt-credentials"
    # Applied as is it creates no key: the pods stay pending instead of running with a known value.
    assert not secret.get("stringData") and not secret.get("data")
    text = (K8S / "secret.example.yaml").read_text()
    for key in ("operator-token", "seed-token", "hf-token"):
        assert key in text, f"secret.example.yaml does not say how to set {key}"
    assert "change-me" not in text and "auth-token" not in text


def test_embedded_prefetch_configs_load() -> None:
    cm = next(d for d in k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "hfbt-prefetch")
    for text, where in [
        (cm["data"]["prefetch.toml"], "k8s ConfigMap"),
        ((SYSTEMD / "prefetch.example.toml").read_text(), "prefetch.example.toml"),
    ]:
        spec = parse(tomllib.loads(text), Path(where))
        assert spec.repos and spec.tracker


def test_kubectl_kustomize_builds() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    built = list(yaml.safe_load_all(r.stdout))
    assert all(d["metadata"].get("namespace") == "hfbt" for d in built if d["kind"] != "Namespace")
    assert not [d for d in built if d["kind"] == "Secret"], "kustomize would apply a credential"


# --- systemd ------------------------------------------------------------------------------------


def unit_settings(text: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", text, re.M)


def test_systemd_units_use_real_commands() -> None:
    for unit in sorted(SYSTEMD.glob("*.service")):
        text = unit.read_text()
        exec_start = unit_settings(text, "ExecStart")[0].split()
        assert exec_start[0] == "/opt/hfbt/bin/hfbt"
        check_hfbt_args(exec_start[1:], unit.name)
        assert re.search(r"^User=hfbt$", text, re.M), f"{unit.name} runs as root"
        check_env_names(text, unit.name)
    check_env_names((SYSTEMD / "hfbt.env.example").read_text(), "hfbt.env.example")
    timer = (SYSTEMD / "hfbt-prefetch.timer").read_text()
    assert re.search(r"^OnCalendar=\*:0/15$", timer, re.M)


def test_systemd_units_load_exactly_their_credentials() -> None:
    roles = {}
    for unit in sorted(SYSTEMD.glob("*.service")):
        text = unit.read_text()
        exec_start = unit_settings(text, "ExecStart")[0].split()
        check_no_credential_in_argv(exec_start, unit.name)
        env = dict(e.split("=", 1) for line in unit_settings(text, "Environment") for e in line.split())
        need = needed_credentials(exec_start[1:])
        assert given_credentials(set(env)) == need, f"{unit.name}: has {given_credentials(set(env))}"
        loaded = dict(c.split(":", 1) for c in unit_settings(text, "LoadCredential"))
        for secret in need:
            # systemd's credential store: root reads the file, the service gets a private copy in %d.
            assert secret not in env, unit.name
            m = re.fullmatch(r"%d/([\w.-]+)", env[secret + "_FILE"])
            assert m and m.group(1) in loaded, f"{unit.name}: {secret}_FILE is no LoadCredential="
        if need == {NODE}:
            assert loaded == {"node-token": "/etc/hfbt/node-token"}, unit.name
        if exec_start[1] == "agent":
            check_agent_host(exec_start[1:], env, unit.name)
        roles[unit.name] = need
    assert roles["hfbt-agent.service"] == roles["hfbt-prefetch.service"] == {NODE}
    assert roles["hfbt-gc.service"] == set()


def test_systemd_env_example_holds_no_credential() -> None:
    text = (SYSTEMD / "hfbt.env.example").read_text()
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key = line.split("=", 1)[0].strip()
            assert key not in ALLOWED_EXTRA_ENV - {"HFBT_HEALTH_URL"} and "TOKEN" not in key, line
    assert "hfbt tracker node add" in text and "/etc/hfbt/node-token" in text
    assert "change-me" not in text


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # hfbt and its user are not installed here: verify the units with a stand-in binary and user.
    for unit in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")]:
        text = unit.read_text().replace("/opt/hfbt/bin/hfbt", "/bin/true")
        text = re.sub(r"^(User|Group)=hfbt$", r"\1=root", text, flags=re.M)
        text = re.sub(r"^EnvironmentFile=", "EnvironmentFile=-", text, flags=re.M)
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # verify exits 0 on an unknown key or a bad specifier (e.g. %d where it means nothing): it only
    # warns, "..., ignoring". Any such line about our units is a failure.
    ours = [line for line in r.stderr.splitlines() if str(tmp_path) in line]
    assert not ours, "\n".join(ours)


# --- docs ---------------------------------------------------------------------------------------


def test_operations_doc_covers_identities_and_credentials() -> None:
    text = OPERATIONS.read_text()
    check_env_names(text, "docs/operations.md")
    assert "--auth-token" not in text
    section = text.split("## Identities and credentials", 1)[1].split("\n## ", 1)[0]
    for needle in (
        "hfbt tracker node add",
        "hfbt tracker node revoke",
        "hfbt tracker node list",
        OPERATOR,
        SEED,
        NODE + "_FILE",
        "--ticket-key",
        "--ticket-ttl",
        "--trust-announce-ip",
        "0600",
        "LoadCredential=",
        "/etc/hfbt/node-token",
    ):
        assert needle in section, f"docs/operations.md, Identities and credentials: says nothing of {needle}"
