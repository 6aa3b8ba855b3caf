"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here), and proof that the
commands they run are the commands the integration tests run (``service.launcher``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from service.launcher import api_command, worker_command

ROOT = Path(__file__).resolve().parents[1]


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: None)  # compose's merge tag


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass


def as_python(cmd: list[str]) -> list[str]:
    """The launcher runs ``sys.executable``; containers run ``python``."""
    return ["python", *cmd[1:]]


def test_compose_runs_the_tested_commands():
    s = compose()["services"]
    assert s["api"]["command"] == as_python(api_command("0.0.0.0", 8000, workers=2))
    assert s["worker"]["command"] == as_python(worker_command(1))


def test_compose_structure():
    doc = compose()
    s = doc["services"]
    # what `docker compose up` starts; Prometheus and Grafana only with --profile monitoring (tests/test_monitoring.py)
    assert {n for n, svc in s.items() if not svc.get("profiles")} == {"redis", "api", "worker"}
    assert {n for n, svc in s.items() if svc.get("profiles")} == {"prometheus", "grafana"}
    # Redis with AOF persistence on a named volume
    cmd = s["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(v.startswith("redis-data:") for v in s["redis"]["volumes"]) and "redis-data" in doc["volumes"]
    for name in ("api", "worker"):
        env = s[name]["environment"]
        assert env["REDIS_URL"].endswith("@redis:6379/0")
        assert s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/data" in env["CKPT_CONVERT_ALLOWED_LOCAL_ROOTS"]
    for name in s:
        assert s[name]["healthcheck"]["test"][0] == "CMD"
    # --scale worker=N: no fixed name and no host port on the worker
    assert "container_name" not in s["worker"] and "ports" not in s["worker"]
    gpu = s["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert s["api"]["ports"] == ["${CKPT_CONVERT_BIND:-127.0.0.1}:8000:8000"]
    # the worker image is the api's image (built once)
    assert s["worker"]["image"] == s["api"]["image"] and "build" in s["api"]
    # the worker healthcheck is a module of ours
    assert s["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.health"]
    import worker.health  # noqa: F401


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` (an error when VAR is unset or empty)."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg

    return re.sub(r"\$\{(\w+)(:\?|:-)?([^}]*)\}", one, value)


def test_compose_requires_the_redis_password_and_the_secret_key():
    """Valkey refuses clients without a password, every client has it, and the API and the workers share the key
    that seals per-job Hub tokens; compose refuses to start without either secret."""
    s = compose()["services"]
    env = {"REDIS_PASSWORD": "0123456789abcdef" * 4, "CKPT_CONVERT_SECRET_KEY": "fedcba9876543210" * 4}
    cmd = [interpolate(c, env) for c in s["redis"]["command"]]
    assert cmd[cmd.index("--requirepass") + 1] == env["REDIS_PASSWORD"]
    assert (
        interpolate(s["redis"]["environment"]["REDISCLI_AUTH"], env) == env["REDIS_PASSWORD"]
    )  # healthcheck
    for name in ("api", "worker"):
        service_env = s[name]["environment"]
        url = urlsplit(interpolate(service_env["REDIS_URL"], env))
        assert (url.hostname, url.port, url.password) == ("redis", 6379, env["REDIS_PASSWORD"])
        assert interpolate(service_env["CKPT_CONVERT_SECRET_KEY"], env) == env["CKPT_CONVERT_SECRET_KEY"]
        for missing in env:
            with pytest.raises(KeyError, match=missing):
                for v in (*service_env.values(), *s["redis"]["command"]):
                    interpolate(str(v), {**env, missing: ""})


def test_the_api_is_published_on_loopback_unless_tokens_and_an_address_are_given():
    """By default the port is bound to 127.0.0.1 (nobody else in); CKPT_CONVERT_BIND opens it, and the API
    itself refuses that without tokens, so that an open port never serves without them."""
    api = compose()["services"]["api"]
    (port,) = api["ports"]
    assert interpolate(port, {}) == "127.0.0.1:8000:8000"
    assert interpolate(port, {"CKPT_CONVERT_API_TOKENS": "ops:admin:x"}) == "127.0.0.1:8000:8000"
    assert interpolate(port, {"CKPT_CONVERT_BIND": "0.0.0.0"}) == "0.0.0.0:8000:8000"
    # the API sees the same address the port is published on, and its tokens
    env = api["environment"]
    assert env["CKPT_CONVERT_BIND"] == "${CKPT_CONVERT_BIND:-127.0.0.1}"
    assert port.startswith(env["CKPT_CONVERT_BIND"] + ":")
    assert env["CKPT_CONVERT_API_TOKENS"] == "${CKPT_CONVERT_API_TOKENS:-}"
    # ... and refuses to start on 0.0.0.0 without tokens (with them, it starts)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_CONVERT_")}
    check = [sys.executable, "-c", "from jobs.settings import get_settings; get_settings().check_bind()"]

    def run(**e: str) -> subprocess.CompletedProcess:
        return subprocess.run(check, env={**base, **e}, cwd=ROOT, capture_output=True, text=True, timeout=60)

    refused = run(CKPT_CONVERT_BIND=interpolate(env["CKPT_CONVERT_BIND"], {"CKPT_CONVERT_BIND": "0.0.0.0"}))
    assert refused.returncode != 0 and "CKPT_CONVERT_API_TOKENS" in refused.stderr
    assert run(CKPT_CONVERT_BIND="0.0.0.0", CKPT_CONVERT_API_TOKENS="ops:admin:x").returncode == 0
    assert run(CKPT_CONVERT_BIND=interpolate(env["CKPT_CONVERT_BIND"], {})).returncode == 0
    # no other service publishes a port, but the monitoring profile's, on loopback only
    ports = {n: svc["ports"] for n, svc in compose()["services"].items() if "ports" in svc}
    assert set(ports) == {"api", "prometheus", "grafana"}
    assert all(p.startswith("127.0.0.1:") for n in ("prometheus", "grafana") for p in ports[n])


def test_cpu_override_drops_the_gpu_reservation():
    over = compose("compose.cpu.yml")
    assert over["services"]["worker"]["deploy"] is None  # `!reset {}`


def dockerfile_instructions() -> list[str]:
    """Logical instructions: comments dropped, ``\\`` continuations joined."""
    out, cur = [], ""
    for ln in (ROOT / "Dockerfile").read_text().splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        cur += ln[:-1] + " " if ln.endswith("\\") else ln
        if not ln.endswith("\\"):
            out.append(cur)
            cur = ""
    assert not cur, "dangling line continuation"
    return out


def test_dockerfile():
    ins = dockerfile_instructions()
    assert ins[0].startswith("FROM python:3.11")
    assert {i.split()[0] for i in ins} <= {
        "FROM",
        "ARG",
        "ENV",
        "WORKDIR",
        "RUN",
        "COPY",
        "USER",
        "EXPOSE",
        "CMD",
    }
    torch = next(i for i in ins if "torch==" in i)
    assert '"torch==2.13.0"' in torch and "--index-url" in torch  # never an unpinned CUDA torch from PyPI
    for pkg in ("converter", "service", "worker"):
        assert f"COPY {pkg} ./{pkg}" in ins
    assert any(i.startswith("USER ") and i != "USER root" for i in ins)
    cmd = next(i for i in ins if i.startswith("CMD "))
    assert yaml.safe_load(cmd[4:]) == compose()["services"]["api"]["command"]
