"""The deployment files agree with the code: compose.yaml gives the app only variables Settings reads, and
the Containerfile builds, runs and probes the service the way hypercorn.toml and the app expect; the
compose profiles' nginx, Prometheus and Grafana files fit the app and each other, and query only metrics
service/metrics.py defines; the GitHub workflow runs what .ci/run runs; and the docs link only to files
that exist and name only settings, metrics and routes the code has."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from service import create_app, csrf, errors, metrics
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("migrate", "web")
SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:8000/health(?![\w/])")
HYPERCORN = tomllib.loads((ROOT / "hypercorn.toml").read_text())


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
    binds = HYPERCORN["bind"]
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


# --- compose profiles -----------------------------------------------------------------------------------

PROFILES = {"proxy": ("proxy",), "monitoring": ("prometheus", "grafana")}
BASE_SERVICES = ("postgres", "redis", "migrate", "web")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts from the repository: source (relative to the repository) -> target in the container."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[source.removeprefix("./")] = target
    return found


def _seconds(text: str | int | float) -> float:
    """A duration as nginx or compose write it ("30s", "1h", "75") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", str(text).strip())
    assert match is not None, f"not a duration: {text!r}"
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return float(match[1]) * scale


@pytest.mark.parametrize(("profile", "names"), PROFILES.items())
def test_optional_services_sit_behind_their_profile(
    compose: dict[str, Any], profile: str, names: tuple[str, ...]
) -> None:
    for name in names:
        assert compose["services"][name]["profiles"] == [profile]


def test_the_base_stack_has_no_profile(compose: dict[str, Any]) -> None:
    """`docker compose up` with no profile still starts the whole service."""
    for name in BASE_SERVICES:
        assert "profiles" not in compose["services"][name]


def test_bind_mounted_files_exist(compose: dict[str, Any]) -> None:
    mounted = [source for service in compose["services"].values() for source in _mounts(service)]
    assert mounted
    for source in mounted:
        assert (ROOT / source).exists(), f"compose mounts ./{source}, which is not in the repository"


def test_monitoring_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name in PROFILES["monitoring"]:
        for port in compose["services"][name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_trusted_proxy_hops_is_zero_unless_set(compose: dict[str, Any]) -> None:
    """Without the proxy, X-Forwarded-For must be ignored; the proxy path sets TRUSTED_PROXY_HOPS=1."""
    hops = _environment(compose["services"]["web"])["TRUSTED_PROXY_HOPS"]
    assert hops == "${TRUSTED_PROXY_HOPS:-0}"
    assert Settings(trusted_proxy_hops=_resolve(hops), _env_file=None).trusted_proxy_hops == 0  # type: ignore[call-arg]


def test_web_is_given_time_to_drain(compose: dict[str, Any]) -> None:
    """docker stop waits this long before SIGKILL: longer than hypercorn's graceful timeout."""
    grace = _seconds(compose["services"]["web"]["stop_grace_period"])
    assert grace >= 2 * HYPERCORN["graceful_timeout"]


# --- the reverse proxy (deploy/nginx.conf) --------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [child for child in self.block or [] if child.name == name]

    def one(self, name: str, *args: str) -> Directive:
        found = [child for child in self.all(name) if not args or child.args == list(args)]
        assert len(found) == 1, f"expected one `{name} {' '.join(args)}` in `{self.name}`, found {len(found)}"
        return found[0]

    def value(self, name: str) -> str:
        return " ".join(self.one(name).args)


_NGINX_TOKEN = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};\"']+")


def _parse_nginx(text: str) -> Directive:
    """nginx's configuration as a tree of directives (enough of the grammar for our file)."""
    lines = [re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines()]
    tokens = iter(_NGINX_TOKEN.findall("\n".join(lines)))

    def block(until_brace: bool) -> list[Directive]:
        directives: list[Directive] = []
        words: list[str] = []
        for token in tokens:
            if token == ";":
                directives.append(Directive(words[0], words[1:]))
                words = []
            elif token == "{":
                directives.append(Directive(words[0], words[1:], block(True)))
                words = []
            elif token == "}":
                assert until_brace, "unbalanced braces in nginx.conf"
                assert not words, f"`{' '.join(words)}` has no `;` before `}}`"
                return directives
            else:
                words.append(token.strip("\"'") if token[0] in "\"'" else token)
        assert not until_brace, "nginx.conf ends inside a block"
        assert not words, "nginx.conf ends inside a directive"
        return directives

    return Directive("main", [], block(False))


@pytest.fixture(scope="module")
def nginx() -> Directive:
    return _parse_nginx((ROOT / "deploy" / "nginx.conf").read_text())


@pytest.fixture(scope="module")
def nginx_server(nginx: Directive) -> Directive:
    return nginx.one("http").one("server")


def test_the_proxy_profile_runs_the_repositorys_nginx_conf(compose: dict[str, Any]) -> None:
    assert _mounts(compose["services"]["proxy"])["deploy/nginx.conf"] == "/etc/nginx/nginx.conf"


def test_nginx_streams_events_unbuffered(nginx_server: Directive) -> None:
    events = nginx_server.one("location", "/api/v1/events")
    assert events.value("proxy_buffering") == "off"
    assert events.value("proxy_cache") == "off"
    assert events.value("proxy_pass") == "http://switchboard"
    # Longer than the longest heartbeat the app can be set to, with room for one lost ping.
    longest_heartbeat = next(
        rule.le for rule in Settings.model_fields["sse_heartbeat_seconds"].metadata if hasattr(rule, "le")
    )
    assert _seconds(events.value("proxy_read_timeout")) >= 2 * longest_heartbeat
    # A location that sets any proxy_set_header loses every one set above it (nginx's inheritance).
    assert not events.all("proxy_set_header"), "the events location would drop the forwarded headers"


def test_nginx_speaks_http11_with_forwarded_headers(nginx_server: Directive) -> None:
    assert nginx_server.value("proxy_http_version") == "1.1"
    headers = {item.args[0].lower(): " ".join(item.args[1:]) for item in nginx_server.all("proxy_set_header")}
    assert headers["connection"] == ""
    # Appended, not replaced: TRUSTED_PROXY_HOPS counts one entry per proxy.
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme"
    assert "x-forwarded-host" in headers
    assert "x-request-id" in headers


def test_nginx_upstream_is_the_web_service(nginx: Directive, compose: dict[str, Any]) -> None:
    upstream = nginx.one("http").one("upstream", "switchboard")
    port = HYPERCORN["bind"][0].rsplit(":", 1)[1]
    assert [server.args[0] for server in upstream.all("server")] == [f"web:{port}"]
    assert "web" in compose["services"]
    # nginx must close idle upstream connections before hypercorn does, never send on a closing one.
    assert _seconds(upstream.value("keepalive_timeout")) < HYPERCORN["keep_alive_timeout"]


def test_nginx_keeps_metrics_inside(nginx_server: Directive) -> None:
    assert nginx_server.one("location", "=", "/metrics").value("return") == "404"


def test_nginx_body_cap_matches_max_body_bytes(nginx_server: Directive) -> None:
    size = nginx_server.value("client_max_body_size")
    match = re.fullmatch(r"(\d+)([km]?)", size.lower())
    assert match is not None
    limit = int(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2]]
    assert limit == Settings.model_fields["max_body_bytes"].default


# --- monitoring: Prometheus, alert rules, Grafana -------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "switchboard.json").read_text())
    assert isinstance(document, dict)
    return document


def _scrape_job(prometheus: dict[str, Any]) -> dict[str, Any]:
    jobs = [job for job in prometheus["scrape_configs"] if job["job_name"] == "switchboard"]
    assert len(jobs) == 1
    return jobs[0]


def test_prometheus_scrapes_every_web_replica(prometheus: dict[str, Any]) -> None:
    job = _scrape_job(prometheus)
    assert job["metrics_path"] == "/metrics"
    port = int(HYPERCORN["bind"][0].rsplit(":", 1)[1])
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["web"]
    assert discovery["type"] == "A"
    assert discovery["port"] == port


def test_prometheus_sends_the_metrics_token(prometheus: dict[str, Any], compose: dict[str, Any]) -> None:
    """The app checks METRICS_TOKEN when set; compose writes the same value where Prometheus reads it."""
    authorization = _scrape_job(prometheus)["authorization"]
    assert authorization["type"] == "Bearer"
    service = compose["services"]["prometheus"]
    assert _environment(service)["METRICS_TOKEN"] == _environment(compose["services"]["web"])["METRICS_TOKEN"]
    script = " ".join(service["command"])
    assert f'"$$METRICS_TOKEN" > {authorization["credentials_file"]}' in script
    assert "exec /bin/prometheus --config.file=/etc/prometheus/prometheus.yml" in script


def test_prometheus_loads_the_alert_rules(prometheus: dict[str, Any], compose: dict[str, Any]) -> None:
    mounts = _mounts(compose["services"]["prometheus"])
    assert mounts["deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prometheus["rule_files"] == [mounts["deploy/alerts.yml"]]


def test_grafana_is_provisioned_from_the_repository(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    mounts = _mounts(compose["services"]["grafana"])
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "switchboard.yml").read_text())["providers"]
    assert provider["options"]["path"] == mounts["deploy/grafana/dashboards"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    used = {
        target["datasource"]["uid"] for panel in _panels(dashboard) for target in panel.get("targets", [])
    }
    assert used == {source["uid"]}


def test_every_alert_rule_is_complete(alert_rules: list[dict[str, Any]]) -> None:
    assert alert_rules
    names = [rule["alert"] for rule in alert_rules]
    assert len(names) == len(set(names))
    for rule in alert_rules:
        assert rule["expr"].strip()
        assert _seconds(rule["for"]) > 0, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# --- the metrics those query exist ----------------------------------------------------------------------

# Series Prometheus makes itself for every scrape target, not the app.
PROMETHEUS_SERIES = frozenset({"up"})
# PromQL's own words: functions are recognised by the parenthesis that follows them, these are not.
_PROMQL_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and"})
_PROMQL_WORDS |= {"or", "unless", "offset", "inf", "nan"}


def _metric_families() -> dict[str, str]:
    """The metric families service/metrics.py defines, by name, with their type."""
    return {
        family.name: family.type
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }


def _exposed_metrics() -> set[str]:
    """Every series name service/metrics.py makes, with the suffixes prometheus-client adds."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {name + suffix for name, kind in _metric_families().items() for suffix in suffixes[kind]}


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold anything
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana's variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if match[2] is None and match[1].lower() not in _PROMQL_WORDS:
            names.add(match[1])
    return names


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        found = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
        exprs.append(found[1] if found else text)
    return exprs


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(http_request_duration_seconds_bucket{job="x",'
        'endpoint!="/a b"}[$__rate_interval]))) / on (instance) group_left sum(up) or vector(0) > 1e-3'
    )
    assert _metric_names(expr) == {"http_request_duration_seconds_bucket", "up"}
    assert "http_requests_total" in _exposed_metrics()
    assert "http_request_duration_seconds_bucket" in _exposed_metrics()


def test_dashboard_queries_only_defined_metrics(dashboard: dict[str, Any]) -> None:
    exprs = _dashboard_exprs(dashboard)
    assert exprs
    known = _exposed_metrics() | PROMETHEUS_SERIES
    for expr in exprs:
        used = _metric_names(expr)
        assert used, f"no metric found in {expr!r}"
        assert used <= known, f"not in service/metrics.py: {sorted(used - known)} ({expr})"


def test_alert_rules_query_only_defined_metrics(alert_rules: list[dict[str, Any]]) -> None:
    known = _exposed_metrics() | PROMETHEUS_SERIES
    for rule in alert_rules:
        used = _metric_names(rule["expr"])
        assert used, f"no metric found in {rule['alert']}"
        assert used <= known, f"{rule['alert']}: not in service/metrics.py: {sorted(used - known)}"


# --- the GitHub workflow runs what .ci/run runs ---------------------------------------------------------


@dataclass(frozen=True)
class MakeCall:
    target: str
    environment: frozenset[str] = field(default_factory=frozenset)
    arguments: str = ""


_MAKE = re.compile(r"^\s*((?:\w+=\S+\s+)*)make\s+(\w+)(.*)$", re.MULTILINE)


def _make_calls(script: str, environment: frozenset[str] = frozenset()) -> list[MakeCall]:
    return [
        MakeCall(target, environment | {item.split("=")[0] for item in inline.split()}, rest.strip())
        for inline, target, rest in _MAKE.findall(script)
    ]


@pytest.fixture(scope="module")
def ci_run() -> str:
    return (ROOT / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert isinstance(document, dict)
    return document


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def _ci_run_variable(script: str, name: str) -> str:
    """A variable's value as .ci/run assigns it (a `${OVERRIDE:-default}` gives the default)."""
    match = re.search(rf"^{name}=(.*)$", script, re.MULTILINE)
    assert match is not None, f".ci/run assigns no {name}"
    value = match[1].strip().strip('"')
    default = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return default[1] if default else value


def test_workflow_runs_the_ci_run_steps_in_order(ci_run: str, workflow: dict[str, Any]) -> None:
    expected = _make_calls(ci_run)
    assert [call.target for call in expected] == ["lint", "test", "test"]
    ran = [
        call
        for step in _steps(workflow)
        if "run" in step
        for call in _make_calls(step["run"], frozenset(step.get("env", {})))
    ]
    assert ran == expected


def test_workflow_tests_with_the_same_coverage_and_databases(ci_run: str, workflow: dict[str, Any]) -> None:
    assert workflow["env"]["COV"] == _ci_run_variable(ci_run, "COV")
    (on_servers,) = [step for step in _steps(workflow) if "TEST_DATABASE_URL" in step.get("env", {})]
    assert on_servers["env"]["TEST_DATABASE_URL"] == _ci_run_variable(ci_run, "PG_URL")
    assert on_servers["env"]["TEST_REDIS_URL"] == _ci_run_variable(ci_run, "REDIS_URL_FOR_TESTS")


def test_workflow_service_containers_are_the_compose_images(
    workflow: dict[str, Any], compose: dict[str, Any]
) -> None:
    services = workflow["jobs"]["checks"]["services"]
    for name in ("postgres", "redis"):
        assert services[name]["image"] == compose["services"][name]["image"]
    assert "5432:5432" in services["postgres"]["ports"]
    assert "6379:6379" in services["redis"]["ports"]


def test_workflow_builds_the_containerfile(workflow: dict[str, Any]) -> None:
    builds = [step["run"] for step in _steps(workflow) if "docker build" in step.get("run", "")]
    assert builds
    assert any(re.search(r"docker build -f Containerfile\b.* \.$", run.strip()) for run in builds)


def test_workflow_python_is_the_images_python(workflow: dict[str, Any], containerfile: list[str]) -> None:
    versions = {
        str(step["with"]["python-version"])
        for step in _steps(workflow)
        if step.get("uses", "").startswith("actions/setup-python")
    }
    assert versions == {"3.11"}
    assert all("python:3.11-" in item for item in _with("FROM", containerfile))


def test_workflow_runs_on_pushes_and_pull_requests(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)


# --- the docs: links resolve, and the names they use exist ----------------------------------------------

DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [ROOT / "README.md", *DOCS]
# The pages of the deployment and operations documentation, held to the code by the tests below.
CHECKED_DOCS = [
    ROOT / "docs" / f"{name}.md"
    for name in ("architecture", "api-guide", "deployment", "operations", "security", "contributing")
]
# Upper-case names in those pages that are neither settings nor error codes, and where they come from.
OTHER_NAMES = {
    "PROMETHEUS_MULTIPROC_DIR",  # read by prometheus-client (docs/configuration.md)
    "TEST_DATABASE_URL",  # tests/conftest.py
    "TEST_REDIS_URL",  # tests/conftest.py
    "PYTEST_ARGS",  # the Makefile
    "COMPOSE_PROFILES",  # docker compose itself
    "QUART_AUTH",  # quart-auth's cookie
    "REQUEST_TIMEOUT",  # the code of a 408, made from werkzeug's name
}
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _prose(path: Path) -> str:
    """A Markdown file without its fenced code blocks."""
    return _FENCE.sub("", path.read_text())


def _anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(path), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _code_spans(path: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose(path))


def _error_codes() -> set[str]:
    pending, codes = [errors.APIError], {csrf.CSRFRefused.code}
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return codes


def _compose_variables() -> set[str]:
    return set(re.findall(r"\$\{(\w+)", (ROOT / "compose.yaml").read_text()))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link names a file that exists, and a heading that exists when it names one."""
    for target in _LINK.findall(re.sub(r"`[^`\n]*`", "``", _prose(path))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{path.name} links to {target}: no such heading"


def test_readme_links_every_doc() -> None:
    linked = {(ROOT / target).resolve() for target in _LINK.findall(_prose(ROOT / "README.md"))}
    missing = [path.name for path in DOCS if path.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("path", CHECKED_DOCS, ids=lambda path: path.name)
def test_docs_name_only_real_settings(path: Path) -> None:
    """Upper-case names in code spans are settings, error codes, or compose's own variables."""
    known = SETTINGS_VARIABLES | _error_codes() | _compose_variables() | OTHER_NAMES
    named = {span for span in _code_spans(path) if re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", span)}
    assert named <= known, f"{path.name} names what the code does not have: {sorted(named - known)}"


@pytest.mark.parametrize("path", CHECKED_DOCS, ids=lambda path: path.name)
def test_docs_name_only_real_metrics(path: Path) -> None:
    """Names shaped like our metrics are series the app exports (or a histogram's own name)."""
    histograms = {name for name, kind in _metric_families().items() if kind == "histogram"}
    known = _exposed_metrics() | histograms
    shaped = re.compile(r"(?:db_pool|sse)_[a-z_]+|[a-z_]+_(?:total|seconds(?:_bucket|_count|_sum)?)")
    named = {span for span in _code_spans(path) if shaped.fullmatch(span)}
    assert named <= known, f"{path.name} names metrics service/metrics.py lacks: {sorted(named - known)}"


@pytest.fixture(scope="module")
def routes() -> set[tuple[str, str]]:
    app = create_app(Settings(app_env="testing", _env_file=None))  # type: ignore[call-arg]
    return {
        (method, re.sub(r"<[^>]+>", "{}", rule.rule))
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
    }


@pytest.mark.parametrize("path", CHECKED_DOCS, ids=lambda path: path.name)
def test_docs_name_only_real_routes(path: Path, routes: set[tuple[str, str]]) -> None:
    """`METHOD /path` names a route; a bare API path names a path some method serves."""
    named, paths = set(), set()
    for span in _code_spans(path):
        with_method = re.fullmatch(r"(GET|POST|PUT|PATCH|DELETE) (/[^\s?]*)(?:\?\S*)?", span)
        if with_method:
            named.add((with_method[1], re.sub(r"\{[^}]+\}", "{}", with_method[2])))
        elif re.fullmatch(r"/(?:api/v1|auth)/[^\s?]+", span):  # not the bare prefixes
            paths.add(re.sub(r"\{[^}]+\}|<[^>]+>", "{}", span))  # a route template, as metrics label it
    assert named <= routes, f"{path.name} names routes the app does not have: {sorted(named - routes)}"
    served = {rule for _, rule in routes}
    assert paths <= served, f"{path.name} names paths the app does not serve: {sorted(paths - served)}"
