"""The suite's resources stay those of the project."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_suite_runs_the_projects_resiliency_policies() -> None:
    project = yaml.safe_load((ROOT / "components/resiliency.yaml").read_text())
    suite = yaml.safe_load((ROOT / "components/e2e/common/resiliency.yaml").read_text())
    assert suite["spec"]["policies"] == project["spec"]["policies"]
    targets = project["spec"]["targets"]
    targets["components"]["pubsub"] = targets["components"].pop("kafka-pubsub")
    assert suite["spec"]["targets"] == targets
