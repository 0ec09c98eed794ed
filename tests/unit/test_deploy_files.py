"""deploy/ matches what the project ships: the ConfigMap is etc/app.json, the Deployment
runs the guide's command with probes and a long enough grace period."""

from __future__ import annotations

import json
from pathlib import Path

from tests import ROOT


def test_deploy_config_map_is_etc_app_json():
    import yaml

    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    generator = next(g for g in kustomization["configMapGenerator"]
                     if g["name"] == "token-worker-config")
    assert generator["files"] == ["app.json"]
    shipped = json.loads((ROOT / "etc" / "app.json").read_text())
    assert json.loads((ROOT / "deploy" / "app.json").read_text()) == shipped


def test_deployment_runs_the_guides_command_with_probes_and_a_long_enough_grace():
    import yaml

    deployment = yaml.safe_load((ROOT / "deploy" / "deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert deployment["spec"]["replicas"] == 3
    assert container["command"] == ["/app/token-worker"]
    assert container["args"] == ["-config", "/app/configs/app.json", "-queue", "token-workers",
                                 "-name-suffix", "$(POD_NAME)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["terminationGracePeriodSeconds"] > 30  # drainTimeout
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["volumeMounts"][0]["mountPath"] == "/app/configs"
    containerfile = (ROOT / "Containerfile").read_text()
    assert "/app/token-worker" in containerfile
    assert "USER 10001" in containerfile
    assert Path(ROOT / "deploy" / "kustomization.yaml").exists()
