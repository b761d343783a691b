"""The deployment files agree with the code: compose.yaml gives the app only variables Settings reads, and
the Containerfile builds, runs and probes the service the way hypercorn.toml and the app expect."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("migrate", "web")
SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:8000/health(?![\w/])")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def containerfile() -> list[str]:
    """The Containerfile's instructions, one per item, with continuation lines joined and comments gone."""
    instructions: list[str] = []
    pending = ""
    for raw in (ROOT / "Containerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instructions.append(pending + line)
        pending = ""
    assert not pending, "the Containerfile ends inside a continued line"
    return instructions


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {str(name): str(value) for name, value in environment.items()}


def _resolve(value: str) -> str:
    """Stand in for compose's interpolation: `${VAR:-default}` gives the default, `${VAR:?…}` a test value."""
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{\w+:\?[^}]*\}", "x" * 40, value)


def _stages(instructions: list[str]) -> list[list[str]]:
    stages: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _with(keyword: str, instructions: list[str]) -> list[str]:
    return [item for item in instructions if item.split(maxsplit=1)[0].upper() == keyword]


def test_compose_defines_the_four_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "migrate", "web"} <= set(compose["services"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_build_from_the_containerfile(compose: dict[str, Any], name: str) -> None:
    build = compose["services"][name]["build"]
    assert isinstance(build, dict)
    assert build["dockerfile"] == "Containerfile"
    assert (ROOT / build.get("context", ".") / build["dockerfile"]).is_file()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_set_only_real_settings(compose: dict[str, Any], name: str) -> None:
    given = set(_environment(compose["services"][name]))
    assert given <= SETTINGS_VARIABLES, f"not Settings fields: {sorted(given - SETTINGS_VARIABLES)}"
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "APP_ENV"} <= given


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_settings_pass_production_validation(compose: dict[str, Any], name: str) -> None:
    environment = _environment(compose["services"][name])
    values = {variable.lower(): _resolve(value) for variable, value in environment.items()}
    settings = Settings(**values, _env_file=None)  # type: ignore[arg-type]
    assert settings.is_production
    assert settings.redis_url is not None
    assert "*" not in settings.allowed_origins


def test_secret_key_has_no_default_in_compose(compose: dict[str, Any]) -> None:
    """A missing SECRET_KEY stops compose with a message instead of starting with a shared secret."""
    secret = _environment(compose["services"]["web"])["SECRET_KEY"]
    assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", secret)


def test_compose_database_url_uses_asyncpg(compose: dict[str, Any]) -> None:
    url = _environment(compose["services"]["web"])["DATABASE_URL"]
    settings = Settings(database_url=url, app_env="testing", _env_file=None)  # type: ignore[call-arg]
    assert settings.database_url.startswith("postgresql+asyncpg://")


def test_web_waits_for_healthy_stores_and_finished_migrations(compose: dict[str, Any]) -> None:
    depends_on = compose["services"]["web"]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_is_a_one_shot_alembic_upgrade(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    command = migrate["command"]
    assert (command if isinstance(command, str) else " ".join(command)) == "alembic upgrade head"
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["postgres", "redis", "web"])
def test_long_running_services_have_healthchecks(compose: dict[str, Any], name: str) -> None:
    healthcheck = compose["services"][name]["healthcheck"]
    assert not healthcheck.get("disable", False)
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")


def test_web_healthcheck_probes_health(compose: dict[str, Any]) -> None:
    probe = " ".join(compose["services"]["web"]["healthcheck"]["test"])
    assert "urllib" in probe
    assert HEALTH_URL.search(probe)


def test_volumes_are_declared_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/", "~")):
                used.add(source)
    assert {"pgdata", "redisdata"} <= used
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"


def test_published_port_is_the_one_hypercorn_binds(compose: dict[str, Any], containerfile: list[str]) -> None:
    binds = tomllib.loads((ROOT / "hypercorn.toml").read_text())["bind"]
    bound_ports = {bind.rsplit(":", 1)[1] for bind in binds}
    published = {str(port).rsplit(":", 1)[1] for port in compose["services"]["web"]["ports"]}
    exposed = {word for item in _with("EXPOSE", containerfile) for word in item.split()[1:]}
    assert published == bound_ports == {"8000"}
    assert "8000" in exposed


def test_containerfile_is_multi_stage(containerfile: list[str]) -> None:
    froms = _with("FROM", containerfile)
    assert len(froms) == 2
    assert all("python:3.11-slim" in item for item in froms)
    builder = _stages(containerfile)[0]
    assert any("pip wheel" in item for item in _with("RUN", builder))


def test_containerfile_runtime_runs_as_non_root(containerfile: list[str]) -> None:
    users = _with("USER", _stages(containerfile)[-1])
    assert users, "the runtime stage sets no USER"
    user = users[-1].split()[1].split(":")[0]
    assert user not in ("root", "0")


def test_containerfile_copies_what_exists(containerfile: list[str]) -> None:
    """Every file the build copies from the context is in the repository (globs may match nothing)."""
    runtime = _stages(containerfile)[-1]
    copied = [item.split()[1:-1] for item in _with("COPY", containerfile) if "--from=" not in item]
    sources = [source for sources in copied for source in sources if not source.startswith("--")]
    assert {"alembic", "alembic.ini", "hypercorn.toml"} <= {
        source for item in _with("COPY", runtime) for source in item.split()[1:-1]
    }
    for source in sources:
        if "*" not in source:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_containerfile_healthcheck_probes_health(containerfile: list[str]) -> None:
    healthchecks = _with("HEALTHCHECK", containerfile)
    assert len(healthchecks) == 1
    assert "urllib" in healthchecks[0]
    assert HEALTH_URL.search(healthchecks[0])


def test_containerfile_sets_the_runtime_environment(containerfile: list[str]) -> None:
    environment = " ".join(_with("ENV", _stages(containerfile)[-1]))
    for setting in ("PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus", "APP_ENV=production", "PYTHONUNBUFFERED=1"):
        assert setting in environment


def test_containerfile_starts_hypercorn_with_a_fresh_metrics_dir(containerfile: list[str]) -> None:
    commands = _with("CMD", _stages(containerfile)[-1])
    assert len(commands) == 1
    argv = json.loads(commands[0].split(maxsplit=1)[1])
    assert argv[:2] == ["sh", "-c"]
    script = argv[2]
    wipe = re.search(r"rm -rf \"\$\{?PROMETHEUS_MULTIPROC_DIR", script)
    start = script.find('exec hypercorn --config hypercorn.toml "service:create_app()"')
    assert wipe is not None
    assert "mkdir -p" in script
    assert start > wipe.start(), "hypercorn must be exec'd after the metrics directory is wiped"
