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


def _documents(name: str) -> list[dict]:
    import yaml

    return [doc for doc in yaml.safe_load_all((ROOT / "deploy" / name).read_text()) if doc]


def test_the_pod_runs_locked_down_as_operations_md_says():
    """docs/operations.md (the manifests): non-root, read-only root filesystem, all
    capabilities dropped, seccomp RuntimeDefault, its own ServiceAccount without an API
    token (docs/security.md: the worker pod runs with no service account token); checked
    as Kubernetes applies them, a container's own settings over the pod's."""
    kustomization = _documents("kustomization.yaml")[0]
    assert "patches" not in kustomization and "patchesStrategicMerge" not in kustomization
    (deployment,) = _documents("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    pod_security = pod.get("securityContext", {})
    containers = pod["containers"] + pod.get("initContainers", [])
    for container in containers:
        security = container.get("securityContext", {})
        effective = {**pod_security, **security}
        assert effective.get("runAsNonRoot") is True, container["name"]
        assert effective.get("runAsUser", 0) != 0, container["name"]
        assert security.get("readOnlyRootFilesystem") is True, container["name"]
        assert security.get("allowPrivilegeEscalation") is False, container["name"]
        assert security.get("privileged") in (None, False), container["name"]
        capabilities = security.get("capabilities", {})
        assert capabilities.get("drop") == ["ALL"] and not capabilities.get("add"), \
            container["name"]
        assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, container["name"]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert pod.get(key) in (None, False), key
    (account,) = _documents("serviceaccount.yaml")
    assert pod["serviceAccountName"] == account["metadata"]["name"] == "token-worker"
    assert account["automountServiceAccountToken"] is False
    assert pod.get("automountServiceAccountToken") is False  # the pod's word wins: false too
    assert "serviceaccount.yaml" in kustomization["resources"]
    assert not any(document.get("kind") in ("Role", "ClusterRole", "RoleBinding",
                                            "ClusterRoleBinding")
                   for resource in kustomization["resources"]
                   for document in _documents(resource))  # no role: nothing to do with one
