"""The suite's resources stay those of the project."""

from __future__ import annotations

from pathlib import Path

import yaml

from e2e.procs import APP_HEALTH

ROOT = Path(__file__).resolve().parents[1]


def test_the_suite_runs_the_projects_resiliency_policies() -> None:
    project = yaml.safe_load((ROOT / "components/resiliency.yaml").read_text())
    suite = yaml.safe_load((ROOT / "components/e2e/common/resiliency.yaml").read_text())
    assert suite["spec"]["policies"] == project["spec"]["policies"]
    targets = project["spec"]["targets"]
    targets["components"]["pubsub"] = targets["components"].pop("kafka-pubsub")
    assert suite["spec"]["targets"] == targets


def _metadata(path: str) -> dict[str, str | None]:
    doc = yaml.safe_load((ROOT / path).read_text())
    return {m["name"]: m.get("value") for m in doc["spec"]["metadata"]}


def test_the_suites_kafka_is_configured_as_production_but_for_where_and_who() -> None:
    """The Kafka pass runs production's consumer settings; only the address, the
    authentication and TLS (a plaintext loopback listener) and the consumer group
    (each suite app id its own, as production's one app id is one group) differ."""
    production = _metadata("components/pubsub-kafka.yaml")
    suite = _metadata("components/e2e/pubsub-kafka/pubsub.yaml")
    where_and_who = {"brokers", "authType", "saslMechanism", "saslUsername", "saslPassword",
                     "caCert", "consumerGroup"}
    assert {k: v for k, v in production.items() if k not in where_and_who} == \
        {k: v for k, v in suite.items() if k not in where_and_who}
    assert suite["authType"] == "none" and "consumerGroup" not in suite
    doc = yaml.safe_load((ROOT / "components/e2e/pubsub-kafka/pubsub.yaml").read_text())
    assert doc["spec"]["type"] == "pubsub.kafka" and doc["metadata"]["name"] == "pubsub"


def test_the_suites_daprd_checks_app_health_as_production_does() -> None:
    doc = yaml.safe_load((ROOT / "deploy/base/deployment.yaml").read_text())
    notes = doc["spec"]["template"]["metadata"]["annotations"]
    assert notes["dapr.io/enable-app-health-check"] == "true"
    assert {k: notes[f"dapr.io/{k}"] for k in APP_HEALTH} == APP_HEALTH
