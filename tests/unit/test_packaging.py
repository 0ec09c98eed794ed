"""The package imports where setuptools no longer ships pkg_resources (setuptools 82+)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED_IMPORT = """
import sys
sys.modules["pkg_resources"] = None  # what a venv with setuptools >= 82 looks like
import token_worker
from token_worker.nats.handshake import pynats2
assert sys.modules["pkg_resources"] is None, "the stand-in leaked into sys.modules"
print(pynats2.NATSNoSubscribeClient.__name__)
"""


def test_imports_without_pkg_resources_and_leaks_no_stand_in():
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "NATSNoSubscribeClient"


def test_public_api():
    import token_worker

    for name in ("TokenWorker", "TokenClient", "load_config", "client_name", "Config"):
        assert hasattr(token_worker, name)


WORKER_SIDE = ("token_worker.serve", "token_worker.idp", "token_worker.tokens.broker",
               "token_worker.tokens.shared", "token_worker.tokens.keys",
               "token_worker.metrics", "token_worker.request_decoding", "urllib3",
               "prometheus_client", "jwt", "cryptography", "msgspec")
"""What a requester must never load: the worker side and its heavy packages."""


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def worker_side(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == side or m.startswith(side + ".")
                                            for side in WORKER_SIDE))


def test_a_requester_loads_no_worker_module_and_none_of_its_packages():
    modules = loaded_after("from token_worker import TokenClient")
    assert "token_worker.client.client" in modules
    assert worker_side(modules) == []


def test_the_asyncio_requester_and_the_auth_adapters_load_no_worker_module():
    modules = loaded_after("from token_worker import AsyncTokenClient\n"
                           "from token_worker.auth import AsyncTokenAuth, TokenAuth")
    assert "token_worker.client.async_client" in modules
    assert worker_side(modules) == []
    threaded = ("token_worker.nats.connection", "token_worker.client.session", "pynats2")
    assert [name for name in threaded if name in modules] == []
    assert "nats" not in modules  # nats-py is the app's: never imported here


def test_nothing_of_opentelemetry_is_loaded_by_the_package_or_a_requester():
    modules = loaded_after("import token_worker\nfrom token_worker import TokenClient, "
                           "AsyncTokenClient\nfrom token_worker import tracing")
    assert sorted(m for m in modules if m.startswith("opentelemetry")) == []


def test_every_export_loads_from_where_it_lives():
    import token_worker

    assert set(token_worker.__all__) == {*token_worker._EXPORTS, "__version__"}
    for name in token_worker.__all__:
        assert getattr(token_worker, name) is not None, name
    assert token_worker.ClientClosed.__module__ == "token_worker.errors"
    assert token_worker.RequestHandler.__module__ == "token_worker.serve.handler"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = token_worker.nothing  # type: ignore[attr-defined]


def test_help_loads_neither_the_worker_nor_the_requester():
    for entry in ("main", "request_main"):
        modules = loaded_after("import contextlib, io\nfrom token_worker import cli\n"
                               "with contextlib.redirect_stdout(io.StringIO()):\n"
                               f"    assert cli.{entry}(['--help']) == 0")
        assert worker_side(modules) == [], entry
        assert "token_worker.client.client" not in modules, entry


def test_python_dash_m_runs_the_worker_command_line():
    result = subprocess.run([sys.executable, "-m", "token_worker", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: token-worker")


def test_every_package_directory_is_a_package():
    """setuptools' ``find:`` packages only directories with an ``__init__.py``."""
    root = Path(token_worker_path()).parent
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        if any(directory.glob("*.py")):
            assert (directory / "__init__.py").exists(), directory


def token_worker_path() -> str:
    import token_worker

    return str(token_worker.__file__)
