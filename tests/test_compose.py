"""docker-compose.yml and the Dockerfile (never run here: no Docker engine) agree with the code:
every service present, every UANET_* variable a real setting, every value valid, ports matching."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import SERVICES, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
# What an operator exports before `docker compose up` (the `${VAR:?…}` ones).
OPERATOR_ENV = {
    "POSTGRES_PASSWORD": "pg-secret",
    "RABBITMQ_PASSWORD": "mq-secret",
    "UANET_SECRET_KEY": "a-long-random-secret",
}
UANET_SERVICES = (*SERVICES, "migrate")

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (enough for this file)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        given = env.get(name)
        if op in (":-", "-"):
            return given if given else arg
        if op in (":?", "?"):
            if not given:
                raise AssertionError(f"{name} is required: {arg}")
            return given
        return given or ""

    return _VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def environment(compose: dict[str, Any], service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: use the mapping form of environment"
    return {key: interpolate(str(value), OPERATOR_ENV) for key, value in env.items()}


def settings_of(env: dict[str, str]) -> Settings:
    fields = {k.removeprefix("UANET_").lower(): v for k, v in env.items() if k.startswith("UANET_")}
    return load_settings(**fields)


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    expected = {"rabbitmq", "postgres", "mailpit", "migrate", *SERVICES}
    assert expected <= set(compose["services"])
    assert compose["services"]["rabbitmq"]["image"].startswith("rabbitmq:3-management")
    assert compose["services"]["postgres"]["image"] == "postgres:16"
    assert compose["services"]["mailpit"]["image"].startswith("axllent/mailpit")
    assert compose["services"]["dispatcher"]["deploy"]["replicas"] == 2


def test_every_uanet_variable_is_a_setting() -> None:
    used = set(re.findall(r"\bUANET_[A-Z0-9_]+", COMPOSE.read_text()))
    assert used, "the compose file configures the services through UANET_* variables"
    unknown = {
        name for name in used if name.removeprefix("UANET_").lower() not in Settings.model_fields
    }
    assert not unknown, f"not settings: {sorted(unknown)}"


def test_the_secret_key_must_be_given() -> None:
    text = COMPOSE.read_text()
    assert re.search(r"UANET_SECRET_KEY: \$\{UANET_SECRET_KEY:\?[^}]+\}", text)
    with pytest.raises(AssertionError, match="UANET_SECRET_KEY"):
        interpolate("${UANET_SECRET_KEY:?set it}", {})


@pytest.mark.parametrize("service", UANET_SERVICES)
def test_each_service_environment_is_valid(compose: dict[str, Any], service: str) -> None:
    env = environment(compose, service)
    try:
        settings = settings_of(env)
    except SettingsError as exc:
        pytest.fail(f"{service}: {exc}")
    needs = SERVICES if service == "migrate" else (service,)
    for name in needs:
        url = settings.database_url(name)
        assert url.startswith("postgresql+asyncpg://"), f"{service}: {name} database is {url}"
        assert urlsplit(url).hostname == "postgres"
    if service != "migrate":
        settings.require_secret()
        assert settings.smtp_host == "mailpit" and settings.smtp_port == 1025
        assert urlsplit(settings.amqp_url).hostname == "rabbitmq"
        assert not settings.twilio_enabled  # no SMS unless the operator gives an account


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_the_body_limit(compose: dict[str, Any], service: str) -> None:
    env = environment(compose, service)
    assert "UANET_MAX_BODY_BYTES" in env, f"{service}: no body limit set"
    assert settings_of(env).max_body_bytes == Settings().max_body_bytes


def test_one_database_per_service_and_postgres_creates_them(compose: dict[str, Any]) -> None:
    settings = settings_of(environment(compose, "migrate"))
    names = {urlsplit(settings.database_url(s)).path.lstrip("/") for s in SERVICES}
    assert len(names) == len(SERVICES)
    init_sql = compose["configs"]["create-databases"]["content"]
    created = set(re.findall(r"CREATE DATABASE (\w+);", init_sql))
    assert names <= created
    mounted = compose["services"]["postgres"]["configs"][0]
    assert mounted["target"].startswith("/docker-entrypoint-initdb.d/")
    # The services' own URLs point at the same databases as migrate's.
    for service in SERVICES:
        own = settings_of(environment(compose, service)).database_url(service)
        assert own == settings.database_url(service)


@pytest.mark.parametrize("service", SERVICES)
def test_ports_and_healthchecks_match_the_settings(compose: dict[str, Any], service: str) -> None:
    port = settings_of(environment(compose, service)).port(service)
    spec = compose["services"][service]
    container_ports = {str(p).rsplit(":", 1)[-1] for p in spec["ports"]}
    assert container_ports == {str(port)}
    probe = " ".join(spec["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in probe
    assert spec["command"] == ["serve", service]


def test_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["rabbitmq"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for spec in services.values():
        for dependency, condition in spec.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    # The project's images come from the Dockerfile at the root.
    for name in UANET_SERVICES:
        assert services[name]["build"]["context"] == "."
        assert services[name]["build"]["dockerfile"] == "Dockerfile"


def _instruction(dockerfile: str, keyword: str) -> list[str]:
    lines = [line for line in dockerfile.splitlines() if line.startswith(f"{keyword} ")]
    assert lines, f"Dockerfile has no {keyword}"
    value: list[str] = json.loads(lines[-1][len(keyword) + 1 :])  # exec form only
    return value


def test_dockerfile_runs_uanet_as_non_root() -> None:
    assert DOCKERFILE.exists()
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert "pip install ." in text
    command = _instruction(text, "ENTRYPOINT") + _instruction(text, "CMD")
    assert command[0] == "uanet"
    assert command[1] == "serve"
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert (ROOT / ".dockerignore").exists()


def test_the_image_gets_every_package_the_project_installs() -> None:
    """A package left out of the build context installs nothing and fails only at run time."""
    packages = re.search(r"^include = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert packages is not None
    copied = set(re.findall(r"^COPY (\S+) \./\S+$", DOCKERFILE.read_text(), re.MULTILINE))
    for pattern in re.findall(r'"([^"]+)\*"', packages.group(1)):
        assert pattern in copied, f"the Dockerfile does not COPY {pattern}"


PUBLIC = {"publisher": "8001", "subscriptions": "8002", "dispatcher": "8003"}


def test_no_port_is_published_but_the_public_ones(compose: dict[str, Any]) -> None:
    """The services' own ports to everyone; the rest (the broker, the database, the mail
    catcher's inbox, the management UI) not at all, or on this host's loopback only (§11)."""
    for name, spec in compose["services"].items():
        for published in spec.get("ports", []):
            mapping = str(published)
            if name in PUBLIC:
                assert mapping.rsplit(":", 1)[-1] == PUBLIC[name], (name, mapping)
            else:
                assert mapping.startswith("127.0.0.1:"), (name, mapping)
    broker_ports = [str(p).rsplit(":", 1)[-1] for p in compose["services"]["rabbitmq"]["ports"]]
    assert "5672" not in broker_ports
    assert "ports" not in compose["services"]["postgres"]


NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")
REPLICAS = {"publisher": "publisher-2", "subscriptions": "subscriptions-2"}


def test_the_cluster_profile_has_three_rabbitmq_nodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = compose["configs"]["rabbitmq-cluster"]["content"]
    listed = re.findall(r"classic_config\.nodes\.\d+ = rabbit@(\S+)", config)
    assert tuple(listed) == NODES
    assert "peer_discovery_backend = classic_config" in config
    cookies = set()
    for node in NODES:
        spec = services[node]
        assert spec["image"].startswith("rabbitmq:3-management")
        assert spec["hostname"] == node  # the node is rabbit@<hostname>, as listed
        assert "healthcheck" in spec
        assert spec["configs"][0]["target"].startswith("/etc/rabbitmq/conf.d/")
        volume = spec["volumes"][0].split(":")[0]
        assert volume in compose["volumes"]
        env = {k: interpolate(str(v), OPERATOR_ENV) for k, v in spec["environment"].items()}
        # One Erlang cookie for the servers and their CLI tools, the same on every node.
        server = env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
        assert server == env["RABBITMQ_CTL_ERL_ARGS"] and server.startswith("-setcookie ")
        cookies.add(server)
    assert len(cookies) == 1
    assert "profiles" not in services["rabbitmq"]  # the single shape keeps its broker
    assert services["rabbitmq-2"]["profiles"] == services["rabbitmq-3"]["profiles"] == ["cluster"]
    assert len({services[n]["volumes"][0] for n in NODES}) == 3  # a data folder each


@pytest.mark.parametrize("service", [*SERVICES, *REPLICAS.values()])
def test_every_process_names_every_node(compose: dict[str, Any], service: str) -> None:
    urls = settings_of(environment(compose, service)).amqp_url.split(",")
    assert [urlsplit(url).hostname for url in urls] == list(NODES)


@pytest.mark.parametrize("service", SERVICES)
def test_the_cluster_profile_runs_two_processes_of_each_service(
    compose: dict[str, Any], service: str
) -> None:
    services = compose["services"]
    if service == "dispatcher":
        assert services[service]["deploy"]["replicas"] == 2
        return
    replica = services[REPLICAS[service]]
    assert replica["profiles"] == ["cluster"]
    assert replica["command"] == services[service]["command"]
    assert "ports" not in replica  # behind the proxy: the public port is published once
    first, second = environment(compose, service), environment(compose, REPLICAS[service])
    assert first == second  # the same databases, the same cluster
    assert replica["depends_on"] == services[service]["depends_on"]


@pytest.mark.parametrize("service", [*SERVICES, *REPLICAS.values()])
def test_each_process_may_have_its_own_broker_user_and_no_other(
    compose: dict[str, Any], service: str
) -> None:
    """``uanet broker users`` gives each service a user; a process is given its own URL (its
    password) and never another's: the others' names it infers (shared/broker_users.py)."""
    env = environment(compose, service)
    own = f"UANET_{service.split('-')[0].upper()}_AMQP_URL"
    given = {key for key in env if key.endswith("_AMQP_URL") and key != "UANET_AMQP_URL"}
    assert given == {own}, f"{service}: {sorted(given)}"
    with_user = settings_of({**env, own: "amqp://uanet-x:pw@rabbitmq:5672/"})
    assert with_user.service_amqp_url(service.split("-")[0]).startswith("amqp://uanet-x:")
