"""The secret scan that ends every test session (tests/conftest.py): it fails the run, in
any order or selection, when a registered secret reached a log line, without printing it;
secrets as short as the log redaction hides (4 characters) included."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ROOT

SECRET = "leaky-secret-for-the-scan-0123"

LEAKING = f'''
import logging
from tests.conftest import remember_secret

def test_logs_a_registered_secret():
    remember_secret("{SECRET}")
    logging.getLogger("token_worker.example").warning("sent {SECRET} by mistake")
'''

CLEAN = '''
import logging
from tests.conftest import remember_secret

def test_logs_nothing_secret():
    remember_secret("never-logged-1", "never-logged-2", "never-logged-3")
    logging.getLogger("token_worker.example").warning("nothing to see")
'''

SHORT = "pw4x"
LEAKING_SHORT = f'''
import logging
from tests.conftest import remember_secret

def test_logs_a_short_registered_secret():
    remember_secret("{SHORT}", "abc")
    logging.getLogger("token_worker.example").warning("password {SHORT} sent, abc too")
'''


def run_session(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """One pytest session with the suite's conftest as a plugin, in a directory of its own."""
    (tmp_path / "test_example.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_example.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False)


def test_a_leaked_secret_fails_the_session_without_printing_it(tmp_path: Path) -> None:
    result = run_session(tmp_path, LEAKING)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "1 passed" in result.stdout  # the test itself passed: the scan failed the run
    assert "secrets found in log lines" in result.stdout
    assert "'leak'... (30 characters) in 1 log line(s)" in result.stdout
    assert "sent ******** by mistake" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_a_clean_session_reports_what_was_scanned(tmp_path: Path) -> None:
    result = run_session(tmp_path, CLEAN)
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert re.search(r"scanned [1-9]\d* log lines for 3 secrets and tokens: none found",
                     result.stdout)


def test_a_leaked_four_character_secret_fails_the_session_too(tmp_path: Path) -> None:
    """The scan's shortest secret is the redaction's (4 characters): a 4-character password
    that reached a line fails the run, named by its first character only; shorter values
    are not scanned (nor redacted: they would match ordinary words)."""
    result = run_session(tmp_path, LEAKING_SHORT)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "'p'... (4 characters) in 1 log line(s)" in result.stdout
    assert "password ******** sent, abc too" in result.stdout
    assert SHORT not in result.stdout + result.stderr
    assert "(3 characters)" not in result.stdout
