"""The package imports where setuptools no longer ships pkg_resources (setuptools 82+)."""

from __future__ import annotations

import subprocess
import sys

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
