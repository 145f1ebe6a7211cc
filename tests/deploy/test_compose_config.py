"""docker-compose.yml: valid Compose, and consistent with the code's configuration names.

- Validated against the Compose specification's JSON schema (``compose-spec.json``, vendored by
  the ``check-jsonschema`` package from https://github.com/compose-spec/compose-spec/blob/main/
  schema/compose-spec.json), after interpolating ``.env.example`` as ``docker compose`` would.
- Every ``AIRFLOW__SECTION__KEY`` is an option Airflow (and its Celery provider) defines; every
  ``LCP_*`` variable is read by our code or our container scripts; every ``MLFLOW_*`` variable
  of the tracking server is one MLflow reads; every ``airflow ...`` command and health check
  parses with Airflow's own CLI parser, and ``mlflow server``'s with MLflow's.
- Ports, service host names and URLs agree with one another; no secret is written in the file.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
CODE_DIRS = ("common", "ingestion", "validation", "training", "promotion", "plugins", "dags")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker")


def read_env_example() -> dict[str, str]:
    """``KEY=value`` lines of .env.example."""
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` interpolation; ``$$`` is a literal ``$``.

    Raises:
        KeyError: a variable with no value and no default.
    """
    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is None:
            raise KeyError(f"${{{name}}} is not set in .env.example and has no default")
        return default

    return _VAR.sub(value, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """The compose file as ``docker compose config`` would see it with .env.example's values."""
    return yaml.safe_load(interpolate(raw, read_env_example()))


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())


def _errors(schema: dict, document: dict) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _health_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1].replace("$HOSTNAME", "host"))
    return list(test[1:])


def test_compose_file_is_valid_against_the_compose_spec_schema(compose, schema):
    assert schema["$id"] == "compose_spec.json"
    assert _errors(schema, compose) == []


def test_the_schema_check_can_fail(compose, schema):
    """A misspelt key and a bad depends_on condition are caught (the check is not vacuous)."""
    broken = copy.deepcopy(compose)
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"
    errors = _errors(schema, broken)
    assert any("helthcheck" in e for e in errors) and any("service_ready" in e for e in errors)


def test_every_variable_comes_from_env_example_and_no_secret_is_in_the_file(raw, compose):
    env = read_env_example()
    used = {m.group(1) for m in _VAR.finditer(raw.replace("$$", ""))}
    assert used - set(env) == set(), "variables used by compose but missing from .env.example"
    assert env.keys() - used == set(), ".env.example defines variables compose never reads"
    secret = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$|REDISCLI_AUTH")
    for name, service in yaml.safe_load(raw)["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z_]+\}", str(value)), f"{name}.{key} must come from .env"
    for key, value in env.items():
        if secret.search(key) and key != "AWS_DEFAULT_REGION":
            assert value.startswith("CHANGE-ME"), f".env.example ships a value for {key}"
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()


def test_services_topology_health_checks_and_dependency_conditions(compose):
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "mlflow", *AIRFLOW_SERVICES} == set(services)
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"minio-init", "airflow-init"}
    for name, service in services.items():
        if name not in one_shot:
            assert "healthcheck" in service, f"{name} has no health check"
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
        for dep, spec in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {dep}"
    # everything but the three base stores waits for something
    assert {n for n, s in services.items() if not s.get("depends_on")} == {"postgres", "redis", "minio"}
    for name in AIRFLOW_SERVICES[1:]:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    # one image, built from our Dockerfile, for Airflow and MLflow
    images = {services[n]["image"] for n in (*AIRFLOW_SERVICES, "mlflow")}
    assert len(images) == 1
    assert all(services[n]["build"]["dockerfile"] == "Dockerfile" for n in (*AIRFLOW_SERVICES, "mlflow"))
    gpu = services["airflow-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_airflow_config_names_exist(compose):
    from airflow.configuration import conf

    described = conf.configuration_description  # core + providers (celery included)
    for name in AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        for key in env:
            if key.startswith("AIRFLOW__"):
                section, option = key[len("AIRFLOW__"):].lower().split("__", 1)
                assert option in described.get(section, {}).get("options", {}), f"{key} is not an Airflow option"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def _names_read_by(paths: list[Path]) -> set[str]:
    pattern = re.compile(r"""(?:environ(?:\.get|\.setdefault)?\(\s*|environ\[\s*|getenv\(\s*)["']([A-Z0-9_]+)["']"""
                         r"""|\$\{?([A-Z][A-Z0-9_]+)""")
    names = set()
    for path in paths:
        for match in pattern.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    # module-level constants holding a variable's name (common/state.py: STATE_ENV = "LCP_STATE_DIR")
    for path in paths:
        names |= set(re.findall(r"""_ENV\s*=\s*["']([A-Z0-9_]+)["']""", path.read_text()))
    return names


def test_platform_variables_are_read_by_the_code(compose):
    code = [p for d in CODE_DIRS for p in (PROJECT_ROOT / d).rglob("*.py")]
    scripts = list((PROJECT_ROOT / "docker").glob("*.sh"))
    read = _names_read_by(code) | _names_read_by(scripts)
    assert {"LCP_STATE_DIR", "LCP_FEED_URL", "LCP_MLFLOW_UI_URL", "MLFLOW_TRACKING_URI"} <= read
    for name in AIRFLOW_SERVICES:
        for key in compose["services"][name]["environment"]:
            if key.startswith("LCP_"):
                assert key in read, f"{name}: {key} is read by no code or script"
    for service in ("postgres", "minio-init"):
        inline = " ".join(_command(compose["services"][service]))  # a service's own shell command
        for key in compose["services"][service]["environment"]:
            if key in ("AIRFLOW_DB", "MLFLOW_DB", "LCP_S3_BUCKET"):  # not the images' own variables
                assert key in read or f"${{{key}}}" in inline, f"{service}: {key} is read by nothing"


def test_mlflow_server_command_and_variables_are_mlflow_s(compose, raw):
    import mlflow.environment_variables as mlflow_env
    from mlflow.cli import server

    service = compose["services"]["mlflow"]
    argv = _command(service)
    assert argv[:2] == ["mlflow", "server"]
    ctx = server.make_context("server", argv[2:])  # raises on an unknown option
    assert ctx.params["port"] == 5000 and ctx.params["serve_artifacts"] is True
    envvars = {p.envvar for p in server.params if p.envvar}
    envvars |= {v.name for v in vars(mlflow_env).values() if isinstance(v, mlflow_env._EnvironmentVariable)}
    env = service["environment"]
    assert {k for k in env if k.startswith("MLFLOW_")} <= envvars
    # MLflow's own authentication, the admin's password from .env (no default)
    assert ctx.params["app_name"] == "basic-auth"
    uninterpolated = yaml.safe_load(raw)["services"]
    assert uninterpolated["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}"
    assert env["LCP_MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql+psycopg2://")
    assert "MLFLOW_AUTH_CONFIG_PATH" in env
    # the tasks authenticate with their own account; the init service creates it as the admin
    tasks = compose["services"]["airflow-worker"]["environment"]
    assert tasks["MLFLOW_TRACKING_USERNAME"] and tasks["MLFLOW_TRACKING_PASSWORD"]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in tasks
    init = compose["services"]["airflow-init"]
    assert "${MLFLOW_ADMIN_PASSWORD}" in raw.split("airflow-init:")[1].split("airflow-apiserver:")[0]
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "promotion.tracking_auth account" in (PROJECT_ROOT / "docker" / "airflow-init.sh").read_text()
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    published = service["ports"][0].split(":")
    assert published[-1] == "5000"
    worker_env = compose["services"]["airflow-worker"]["environment"]
    assert urlsplit(worker_env["MLFLOW_TRACKING_URI"]).netloc == "mlflow:5000"
    assert urlsplit(worker_env["LCP_MLFLOW_UI_URL"]).port == int(published[0])
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_airflow_commands_and_health_checks_parse_with_airflow_s_cli(compose):
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    expected = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer",
                "airflow-worker": "celery"}
    for name, subcommand in expected.items():
        service = compose["services"][name]
        argv = _command(service)
        assert argv[0] == "airflow" and argv[1] == subcommand
        parser.parse_args(argv[1:])  # SystemExit on an unknown subcommand or option
        health = _health_argv(service)
        if health[0] == "airflow":
            parser.parse_args(health[1:])
        if health[0] == "celery":
            module, attr = health[health.index("--app") + 1].rsplit(".", 1)
            import importlib

            assert hasattr(importlib.import_module(module), attr), health
    with pytest.raises(SystemExit):
        parser.parse_args(["celery", "wrker"])  # the parser does reject a wrong command
    worker = _command(compose["services"]["airflow-worker"])
    assert worker[1:3] == ["celery", "worker"]
    init = _command(compose["services"]["airflow-init"])
    assert init == ["airflow-init.sh"] and "airflow db migrate" in (PROJECT_ROOT / "docker" / init[0]).read_text()


def test_ports_and_urls_agree_with_the_services(compose):
    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    api_argv = _command(services["airflow-apiserver"])
    api_port = api_argv[api_argv.index("--port") + 1]
    assert services["airflow-apiserver"]["ports"][0].endswith(f":{api_port}")
    execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution.hostname, str(execution.port), execution.path) == ("airflow-apiserver", api_port, "/execution/")
    assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres"
    assert urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"]).hostname == "postgres"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    assert urlsplit(env["AWS_ENDPOINT_URL"]).hostname == "minio"
    assert urlsplit(services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert urlsplit(env["LCP_AIRFLOW_UI_URL"]).port == int(services["airflow-apiserver"]["ports"][0].split(":")[0])
    for url in (env["LCP_FEED_URL"], env["LCP_DVC_REMOTE_URL"], services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"]):
        assert urlsplit(url).netloc == read_env_example()["LCP_S3_BUCKET"], url
    scheduler_health = " ".join(_health_argv(services["airflow-scheduler"]))
    assert "8974/health" in scheduler_health and env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    api_health = " ".join(_health_argv(services["airflow-apiserver"]))
    assert f"localhost:{api_port}/api/v2/monitor/health" in api_health
    # the dag and plugin folders are where the Dockerfile puts the code
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/lcp/dags" and "COPY --chown=50000:0 dags/ dags/" in dockerfile
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/lcp/plugins" and "plugins/ plugins/" in dockerfile
    assert "WORKDIR /opt/lcp" in dockerfile


def test_dockerfile_installs_the_lock_and_copies_every_package():
    import tomllib

    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "COPY requirements/dev.lock" in dockerfile and "uv pip install --system -r" in dockerfile
    packages = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        assert f"COPY --chown=50000:0 {package}/ {package}/" in dockerfile, package
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                if not src.startswith("--"):
                    assert (PROJECT_ROOT / src).exists(), src
    for script in ("entrypoint.sh", "airflow-init.sh", "postgres-init.sh"):
        assert os.access(PROJECT_ROOT / "docker" / script, os.X_OK), script
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", ".venv", ".state"} <= set(ignored)
