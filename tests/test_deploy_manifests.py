"""The deployment manifests in ``deploy/`` (and the env examples in the docs) against the real settings tree.

No container engine or cluster runs here, so these tests read the files: every ``TICKETPAGER_*`` variable
a manifest or doc uses must name a real field of :class:`ticketpager.settings.Settings` (prefix ``TICKETPAGER_``,
nested delimiter ``__``, case-insensitive) — pydantic-settings silently ignores unknown variables, so a
typo would otherwise be a setting that quietly never applies. Literal values are loaded through
pydantic-settings and must land in that field. The Kubernetes, compose, Dockerfile and systemd checks
assert what an operator relies on: probes, two replicas, a PodDisruptionBudget, non-root, reload, and a
per-replica PagerDuty rate limit that adds up to PagerDuty's limit.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_origin

import pytest
import yaml
from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic.fields import FieldInfo

from ticketpager.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd" / "ticketpager.service"
DOCS = [DEPLOY / "README.md", ROOT / "docs" / "operations.md"]
PREFIX = "TICKETPAGER_"
NAME = re.compile(r"\bTICKETPAGER_[A-Z0-9_]*[A-Z0-9]")
PAGERDUTY_EVENTS_PER_MINUTE = 120  # per routing key: https://developer.pagerduty.com/docs/events-api-v2/rate-limiting/
# Variables the test suite reads (tests/conftest.py, .ci/run); they are not settings and docs may mention them.
NOT_SETTINGS = {"TICKETPAGER_TEST_POSTGRES_URL"}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - containers must listen beyond their own loopback


# -- the settings tree, walked the way pydantic-settings reads the environment --------------------------
class UnknownSetting(LookupError):
    pass


@dataclass(frozen=True)
class Resolved:
    path: tuple[str, ...]  # attribute names from Settings down to the field
    field: FieldInfo | None  # the leaf field (None for a key inside a dict field)


def resolve(env_name: str) -> Resolved:
    """Map ``TICKETPAGER_A__B`` to ``Settings.a.b``; :class:`UnknownSetting` says why it does not exist."""
    if not env_name.upper().startswith(PREFIX):
        raise UnknownSetting(f"{env_name}: does not start with {PREFIX}")
    parts = env_name[len(PREFIX):].lower().split("__")
    model: type[BaseModel] = Settings
    path: list[str] = []
    for index, part in enumerate(parts):
        fields = {name.lower(): (name, info) for name, info in model.model_fields.items()}
        if part not in fields:
            where = ".".join(path) or "Settings"
            raise UnknownSetting(f"{env_name}: {where} has no field {part!r} (fields: {', '.join(sorted(fields))})")
        name, info = fields[part]
        path.append(name)
        rest = parts[index + 1:]
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not rest:
                return Resolved(tuple(path), info)  # the whole nested model as JSON
            model = annotation
            continue
        if rest:
            if get_origin(annotation) is dict and all(rest):
                return Resolved((*path, *rest), None)  # TICKETPAGER_X__MAP__KEY sets one key of a dict field
            raise UnknownSetting(f"{env_name}: {'.'.join(path)} is a plain field; nothing nests under it")
        return Resolved(tuple(path), info)
    raise UnknownSetting(f"{env_name}: empty name")  # pragma: no cover - split() never yields no parts


def read_attr(settings: Settings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for name in path:
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return value


# -- what the manifests use -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Use:
    file: Path
    name: str
    value: str | None  # a literal value, if the manifest gives one (not a secret reference)


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _yaml_documents(path)]


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_objects() if doc.get("kind") == kind]


def k8s_containers() -> Iterator[dict[str, Any]]:
    for obj in k8s_objects():
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        yield from spec.get("initContainers", []) + spec.get("containers", [])


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) for item in env]
        return {p[0]: p[1] if len(p) > 1 else None for p in pairs}
    return {str(k): None if v is None else str(v) for k, v in env.items()}


def dockerfile_env() -> dict[str, str]:
    """``ENV K=V K2=V2`` instructions (with line continuations)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for token in shlex.split(line.strip()[4:]):
                key, sep, value = token.partition("=")
                if sep:
                    out[key] = value
    return out


def systemd_directives() -> list[tuple[str, str, str]]:
    """(section, key, value) in order; keys repeat (Environment=, …)."""
    out, section = [], ""
    for raw in SYSTEMD.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def systemd_value(key: str) -> list[str]:
    return [value for _, k, value in systemd_directives() if k == key]


def systemd_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in systemd_value("Environment"):
        for token in shlex.split(value):
            k, _, v = token.partition("=")
            env[k] = v
    return env


def literal_uses() -> dict[Path, dict[str, str]]:
    """Per manifest, the TICKETPAGER_* variables given a literal value (each manifest is one environment)."""
    k8s: dict[str, str] = {}
    for container in k8s_containers():
        for item in container.get("env", []):
            if "value" in item:
                k8s[item["name"]] = str(item["value"])
    out: dict[Path, dict[str, str]] = {K8S: k8s, DOCKERFILE: dockerfile_env(), SYSTEMD: systemd_environment()}
    for name, service in compose()["services"].items():
        env = {k: v for k, v in compose_environment(service).items() if v is not None}
        out[COMPOSE.with_name(f"{COMPOSE.name}#{name}")] = env
    return {path: {k: v for k, v in env.items() if k.startswith(PREFIX)} for path, env in out.items()}


def all_uses() -> list[Use]:
    uses: list[Use] = []
    for path, env in literal_uses().items():
        uses.extend(Use(path, name, value) for name, value in env.items())
    texts = [DOCKERFILE, COMPOSE, SYSTEMD, *sorted(K8S.glob("*.yaml")), *DOCS]
    for path in texts:  # every mention, incl. secret references, comments and docs' env examples
        uses.extend(Use(path, name, None) for name in NAME.findall(path.read_text()) if name not in NOT_SETTINGS)
    return uses


# -- every variable is a real setting ----------------------------------------------------------------------
def test_every_manifest_and_doc_variable_is_a_setting() -> None:
    uses = all_uses()
    files = {use.file.name.split("#")[0] for use in uses}
    expected = {"Dockerfile", "docker-compose.yml", "deployment.yaml", "ticketpager.service", "README.md",
                "operations.md"}
    assert expected <= files, f"no TICKETPAGER_* variable found in {expected - files}: is the extraction broken?"
    problems = []
    for use in uses:
        try:
            resolve(use.name)
        except UnknownSetting as exc:
            problems.append(f"{use.file.relative_to(ROOT)}: {exc}")
    assert not problems, "\n".join(sorted(set(problems)))


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("TICKETPAGER_DATABASE_URL", ("database_url",)),
        ("ticketpager_rules_path", ("rules_path",)),
        ("TICKETPAGER_PAGERDUTY__EVENTS_URL", ("pagerduty", "events_url")),
        ("TICKETPAGER_JIRA__WEBHOOK_SECRETS", ("jira", "webhook_secrets")),
        ("TICKETPAGER_ZENDESK__CUSTOM_FIELD_NAMES__360001", ("zendesk", "custom_field_names", "360001")),
        ("TICKETPAGER_ENGINE", ("engine",)),
    ],
)
def test_resolve_follows_the_settings_tree(name: str, path: tuple[str, ...]) -> None:
    assert resolve(name).path == path


@pytest.mark.parametrize(
    "typo",
    [
        "TICKETPAGER_DATABASEURL",  # missing underscore
        "TICKETPAGER_PAGERDUTY_EVENTS_URL",  # single underscore where the nested delimiter is needed
        "TICKETPAGER_PAGERDUTY__EVENT_URL",  # misspelt nested field
        "TICKETPAGER_JIRA__WEBHOOK_SECRET",  # the field is plural (rotation)
        "TICKETPAGER_DATABASE_URL__HOST",  # nothing nests under a plain field
        "TICKETPAGER_SERVICENOW__API_TOKEN",  # a field of another connector
    ],
)
def test_resolve_rejects_typos(typo: str) -> None:
    with pytest.raises(UnknownSetting):
        resolve(typo)


def test_a_typo_in_a_manifest_would_fail() -> None:
    """The extraction sees variables in every format the manifests use, so a typo there cannot slip by."""
    assert NAME.findall("ENV TICKETPAGER_PAGERDUTY__EVENT_URL=x") == ["TICKETPAGER_PAGERDUTY__EVENT_URL"]
    with pytest.raises(UnknownSetting):
        resolve(NAME.findall("- name: TICKETPAGER_JIRA__WEBHOOK_SECRET")[0])


@pytest.mark.parametrize("manifest", sorted(literal_uses(), key=str), ids=lambda p: p.name)
def test_literal_values_load_into_that_setting(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings itself reads each manifest's environment, and every value lands in the field."""
    env = literal_uses()[manifest]
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for name, value in env.items():
        resolved = resolve(name)
        actual = read_attr(settings, resolved.path)
        expected: Any = value
        if resolved.field is not None and resolved.field.annotation is not None:
            expected = TypeAdapter(resolved.field.annotation).validate_python(value)
        if isinstance(actual, SecretStr):
            actual, expected = actual.get_secret_value(), expected.get_secret_value()
        assert actual == expected, f"{manifest.name}: {name}={value!r} became {actual!r}"


# -- Kubernetes -------------------------------------------------------------------------------------------
def the_deployment() -> dict[str, Any]:
    deployments = k8s_kind("Deployment")
    assert len(deployments) == 1, "one ticketpager Deployment"
    return deployments[0]


def main_container() -> dict[str, Any]:
    containers = the_deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def named_port(container: dict[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in ports, f"probe/service port {port!r} is not a named container port {sorted(ports)}"
    return int(ports[port])


def test_k8s_deployment_runs_two_replicas_with_probes() -> None:
    deployment = the_deployment()
    assert deployment["spec"]["replicas"] == 2
    container = main_container()
    assert container["args"][:1] == ["serve"] and ALL_INTERFACES in container["args"]
    listen = int(container_env(container)["TICKETPAGER_PORT"]["value"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path, f"{probe} must hit {path}"
        assert named_port(container, http["port"]) == listen, f"{probe} must hit the port ticketpager listens on"
    assert "resources" in container and container["resources"]["limits"].get("memory")


def test_k8s_runs_non_root_with_a_read_only_root_fs() -> None:
    pod = the_deployment()["spec"]["template"]["spec"]
    container = main_container()
    merged = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert merged.get("runAsNonRoot") is True
    assert merged.get("runAsUser", 0) != 0
    assert container["securityContext"].get("readOnlyRootFilesystem") is True
    assert container["securityContext"].get("allowPrivilegeEscalation") is False
    assert "ALL" in container["securityContext"].get("capabilities", {}).get("drop", [])


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = the_deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def selects_pods(selector: dict[str, str]) -> bool:
    return bool(selector) and all(pod_labels().get(k) == v for k, v in selector.items())


def test_k8s_pdb_and_service_select_the_pods() -> None:
    pdbs = k8s_kind("PodDisruptionBudget")
    assert len(pdbs) == 1 and pdbs[0]["spec"]["minAvailable"] == 1
    assert selects_pods(pdbs[0]["spec"]["selector"]["matchLabels"])
    services = k8s_kind("Service")
    assert len(services) == 1 and selects_pods(services[0]["spec"]["selector"])
    for port in services[0]["spec"]["ports"]:
        assert named_port(main_container(), port["targetPort"]) == 8080


def test_k8s_secrets_come_from_secret_refs() -> None:
    env = container_env(main_container())
    secret_fields = {
        name
        for name, item in env.items()
        if name.startswith(PREFIX)
        and (field := resolve(name).field) is not None
        and ("Secret" in str(field.annotation))
    }
    assert {"TICKETPAGER_DATABASE_URL", "TICKETPAGER_METRICS_TOKEN"} - set(env) == set()
    assert secret_fields, "the Deployment sets no secret at all?"
    for name in secret_fields | {"TICKETPAGER_DATABASE_URL"}:  # the URL carries the password
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref.get("name") and ref.get("key"), f"{name} must come from a Secret (secretKeyRef)"
        assert "value" not in env[name], f"{name} must not be written in the manifest"


def test_k8s_rules_configmap_is_mounted_as_a_watched_directory() -> None:
    container = main_container()
    rules_path = container_env(container)["TICKETPAGER_RULES_PATH"]["value"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert rules_path in mounts, "the rules volume must be mounted at TICKETPAGER_RULES_PATH"
    mount = mounts[rules_path]
    assert "subPath" not in mount, "a subPath mount never receives ConfigMap updates: no hot reload"
    volumes = {v["name"]: v for v in the_deployment()["spec"]["template"]["spec"]["volumes"]}
    configmap = volumes[mount["name"]]["configMap"]["name"]
    assert configmap in {c["metadata"]["name"] for c in k8s_kind("ConfigMap")}


def test_k8s_rules_configmap_loads_with_the_pods_environment(tmp_path: Path) -> None:
    """The example rules validate with the real loader, and every ${VAR} they use is set in the pod."""
    from rules.load import load_rules

    (configmap,) = k8s_kind("ConfigMap")
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    pod_env = {name: f"R{index:031d}" for index, name in enumerate(container_env(main_container()))}
    ruleset = load_rules(tmp_path, pod_env)
    assert len(ruleset.names) >= 1


def test_k8s_rate_limit_is_pagerdutys_for_the_whole_cluster() -> None:
    """The replicas count their sends together (through the outbox): the setting is the cluster's."""
    limit = int(container_env(main_container())["TICKETPAGER_PAGERDUTY__RATE_LIMIT_PER_MINUTE"]["value"])
    assert limit <= PAGERDUTY_EVENTS_PER_MINUTE


# -- docker compose -----------------------------------------------------------------------------------------
def ticketpager_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if "serve" in " ".join(s.get("command", []))}


def test_compose_has_postgres_and_two_replicas() -> None:
    services = compose()["services"]
    replicas = ticketpager_services()
    assert len(replicas) == 2
    (postgres,) = [s for s in services.values() if str(s.get("image", "")).startswith("postgres")]
    assert "healthcheck" in postgres
    pg_name = next(n for n, s in services.items() if s is postgres)
    for name, service in replicas.items():
        assert service["depends_on"][pg_name]["condition"] == "service_healthy", name
        assert service.get("env_file"), f"{name}: secrets come from an env_file"
        assert "/healthz" in str(service["healthcheck"]["test"]) or "/readyz" in str(service["healthcheck"]["test"])
        env = compose_environment(service)
        assert "TICKETPAGER_DATABASE_URL" not in env, "the database password belongs in the env_file"
        rules_path = env["TICKETPAGER_RULES_PATH"]
        mounts = [v for v in service["volumes"] if str(v).split(":")[1] == rules_path]
        assert mounts and str(mounts[0]).endswith(":ro"), f"{name}: rules mounted read-only at {rules_path}"
        source = (COMPOSE.parent / str(mounts[0]).split(":")[0]).resolve()
        assert source == ROOT / "rules" / "examples", "the example rules are mounted"
    limits = {int(compose_environment(s)["TICKETPAGER_PAGERDUTY__RATE_LIMIT_PER_MINUTE"] or 0)
              for s in replicas.values()}
    assert limits == {PAGERDUTY_EVENTS_PER_MINUTE}, "one cluster-wide limit, the same on every replica"


def test_compose_builds_from_the_dockerfile() -> None:
    for service in ticketpager_services().values():
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


# -- Dockerfile ---------------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms and all(rest.startswith("python:3.11-slim") for rest in froms)
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    (healthcheck,) = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    assert any(word == "RUN" and ".[postgres]" in rest for word, rest in instructions)
    cmd = " ".join(rest for word, rest in instructions if word in ("ENTRYPOINT", "CMD"))
    assert "ticketpager" in cmd and "serve" in cmd and ALL_INTERFACES in cmd


def test_dockerfile_copies_only_existing_package_paths() -> None:
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY" and "--from" not in rest]
    sources = [src for parts in copies for src in parts[:-1]]
    assert sources, "no COPY instruction found"
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository (build context is the repo root)"
    assert not any(src in (".", "./") for src in sources), "copying the whole context would ship .env and databases"


def test_dockerfile_copies_every_file_pyproject_names() -> None:
    """The build reads pyproject's readme and license-files: one left out ships an image without its licence
    (setuptools: "Pattern 'LICENSE' did not match any files", an error once setuptools enforces it)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    readme = project.get("readme")
    named = [*project.get("license-files", []), *([readme] if isinstance(readme, str) else [])]
    assert "LICENSE" in named
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY" and "--from" not in rest]
    copied = [Path(src.rstrip("/")) for parts in copies for src in parts[:-1]]
    for pattern in named:
        files = sorted(ROOT.glob(pattern))
        assert files, f"pyproject names {pattern}, which is not in the repository"
        for path in (f.relative_to(ROOT) for f in files):
            assert any(path == src or src in path.parents for src in copied), f"deploy/Dockerfile does not COPY {path}"


# -- systemd ------------------------------------------------------------------------------------------------
def test_systemd_unit_serves_reloads_and_is_hardened() -> None:
    (exec_start,) = systemd_value("ExecStart")
    assert exec_start.split()[0].endswith("/ticketpager") and exec_start.split()[1] == "serve"
    assert systemd_value("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert systemd_value("Restart") == ["on-failure"]
    assert systemd_value("EnvironmentFile")
    assert systemd_value("NoNewPrivileges") == ["yes"]
    assert systemd_value("ProtectSystem") == ["strict"]
    (state,) = systemd_value("StateDirectory")
    url = systemd_environment()["TICKETPAGER_DATABASE_URL"]
    assert url.startswith(f"sqlite:////var/lib/{state}/"), "ProtectSystem=strict: only the StateDirectory is writable"


# -- the documented env file covers the mounted example rules ----------------------------------------------
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def test_documented_env_file_sets_every_routing_key_of_the_example_rules() -> None:
    """compose mounts rules/examples: an unset key falls back to a placeholder PagerDuty refuses (dead letter)."""
    examples = sorted((ROOT / "rules" / "examples").glob("*.yaml"))
    if not examples:
        pytest.skip("rules/examples has no rule files yet")
    wanted = {name for path in examples for name in ENV_REFERENCE.findall(path.read_text())}
    readme = (DEPLOY / "README.md").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", readme, flags=re.MULTILINE))
    assert wanted <= documented, f"deploy/README.md's ticketpager.env does not set {sorted(wanted - documented)}"
