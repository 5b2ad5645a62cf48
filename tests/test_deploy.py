"""docker/ and deploy/ checked by construction: no Docker engine or Kubernetes cluster runs here.

YAML parses; every hfbt command, flag and HFBT_* variable the files use exists in the CLI; images are
pinned and run as non-root with healthchecks; the embedded prefetch configs load. Where the tool is
installed, `docker compose config` (or docker-compose), `kubectl kustomize` and `systemd-analyze
verify` run too (skipped otherwise; docs/operations.md says what was run).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from hfbt.cli import app
from hfbt.prefetch import parse

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKER, K8S, SYSTEMD = ROOT / "docker", ROOT / "deploy" / "k8s", ROOT / "deploy" / "systemd"
CLI = typer.main.get_command(app)


def options(command: str) -> set[str]:
    return {o for p in CLI.commands[command].params for o in (*p.opts, *p.secondary_opts)}


def env_vars() -> set[str]:
    out = set()
    for cmd in CLI.commands.values():
        for p in cmd.params:
            env = getattr(p, "envvar", None)
            out.update([env] if isinstance(env, str) else env or [])
    return out


def check_hfbt_args(args: list[str], where: str) -> None:
    """`hfbt <command> --flag value ...` uses a real command and only flags it has."""
    command = args[0]
    assert command in CLI.commands, f"{where}: no hfbt command {command!r}"
    known = options(command)
    for a in args[1:]:
        if a.startswith("--"):
            assert a.split("=", 1)[0] in known, f"{where}: hfbt {command} has no {a}"


def hfbt_invocations(text: str) -> list[list[str]]:
    """`hfbt ...` command lines inside a shell snippet (up to ;, &, | or the end)."""
    found = []
    for m in re.finditer(r"(?:^|[\s;&|(])(?:/opt/hfbt/bin/)?hfbt\s+([^;&|\n]+)", text):
        found.append(m.group(1).split())
    return found


ALLOWED_EXTRA_ENV = {"HFBT_HEALTH_URL"}  # read by docker/healthcheck.py, not the CLI


def check_env_names(text: str, where: str) -> None:
    for name in set(re.findall(r"\bHFBT_[A-Z_]+\b", text)):
        assert name in env_vars() | ALLOWED_EXTRA_ENV, f"{where}: {name} is no hfbt setting"


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
    monkeypatch.setenv("HFBT_METRICS_PORT", "9200")
    assert hc.health_url(["hfbt", "seed"]) == "http://127.0.0.1:9200/metrics"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_runs_every_role_with_real_commands_and_flags() -> None:
    doc = compose()
    services = doc["services"]
    assert {"origin", "tracker", "seed", "agent1", "agent2", "demo"} <= set(services)
    for name in ("tracker", "seed", "agent1", "agent2"):
        svc = services[name]
        assert svc["image"] == "hfbt:0.1.0" and svc["build"]["dockerfile"] == "docker/Dockerfile"
        check_hfbt_args(svc["command"], f"compose {name}")
    assert services["agent1"]["command"][0] == services["agent2"]["command"][0] == "agent"
    # The demo pulls on both agents and the seed mirrors from the demo origin.
    demo = services["demo"]["command"][0]
    for args in hfbt_invocations(demo):
        check_hfbt_args(args, "compose demo")
    assert "http://agent1:6970" in demo and "http://agent2:6970" in demo
    assert "http://origin:8090" in services["seed"]["command"]
    assert "serve-dir" in services["origin"]["command"][0]
    assert set(doc["volumes"]) >= {"tracker-data", "seed-data", "agent1-cache", "agent2-cache"}
    for name in ("seed", "agent1", "agent2"):
        assert all(
            services[name]["depends_on"][d]["condition"] == "service_healthy"
            for d in services[name]["depends_on"]
        )
    check_env_names((DOCKER / "compose.yaml").read_text(), "compose.yaml")


def test_docker_compose_config_validates() -> None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        cmd = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    r = subprocess.run(
        [*cmd, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


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
    assert sorted(kustomization["resources"]) == sorted(
        f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml"
    )
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert (
            spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        )
        for c in spec["containers"]:
            assert c["image"] == "hfbt", where
            assert c["resources"]["limits"]["memory"], where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            if "args" in c and c.get("command") is None:
                check_hfbt_args(c["args"], where)
            for args in hfbt_invocations(" ".join(c.get("args", []))):
                if c.get("command"):
                    check_hfbt_args(args, where)
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
    assert pod_spec(cron)["volumes"][0]["hostPath"]["path"] == next(
        v["hostPath"]["path"] for v in spec["volumes"] if v.get("hostPath")
    ), "prefetch must see the agent's cache and state dir"


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


# --- systemd ------------------------------------------------------------------------------------


def test_systemd_units_use_real_commands() -> None:
    for unit in sorted(SYSTEMD.glob("*.service")):
        text = unit.read_text()
        exec_start = re.search(r"^ExecStart=(.+)$", text, re.M).group(1).split()
        assert exec_start[0] == "/opt/hfbt/bin/hfbt"
        check_hfbt_args(exec_start[1:], unit.name)
        assert re.search(r"^User=hfbt$", text, re.M), f"{unit.name} runs as root"
        check_env_names(text, unit.name)
    check_env_names((SYSTEMD / "hfbt.env.example").read_text(), "hfbt.env.example")
    timer = (SYSTEMD / "hfbt-prefetch.timer").read_text()
    assert re.search(r"^OnCalendar=\*:0/15$", timer, re.M)


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
