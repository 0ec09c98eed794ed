"""scripts/pytest-layers: which pytest runs a set of arguments makes, in which order."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pytest-layers"


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("pytest_layers", str(SCRIPT))
    spec = importlib.util.spec_from_loader("pytest_layers", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def runs(layers: ModuleType, *arguments: str) -> list[list[str]]:
    """The pytest arguments of each planned run (the interpreter and ``-m pytest`` cut)."""
    plans = layers.plan(list(arguments))
    assert all(plan[:3] == [sys.executable, "-m", "pytest"] for plan in plans)
    return [plan[3:] for plan in plans]


def test_no_arguments_run_the_unit_layer_then_the_real_server_suite(layers: ModuleType) -> None:
    assert runs(layers) == [["-q", "tests/unit"], ["tests/integration"]]


def test_options_go_to_both_layers(layers: ModuleType) -> None:
    assert runs(layers, "-k", "reconnect", "-x") == [
        ["-q", "tests/unit", "-k", "reconnect", "-x"],
        ["tests/integration", "-k", "reconnect", "-x"]]


def test_a_path_runs_in_its_own_layer_only(layers: ModuleType) -> None:
    assert runs(layers, "tests/integration/test_faults.py::test_flood", "-x") == [
        ["tests/integration/test_faults.py::test_flood", "-x"]]
    assert runs(layers, "tests/unit/test_config.py") == [["-q", "tests/unit/test_config.py"]]


def test_paths_in_both_layers_keep_the_order_of_layers(layers: ModuleType) -> None:
    assert runs(layers, "tests/integration/test_cli.py", "tests/unit/test_wire.py") == [
        ["-q", "tests/unit/test_wire.py"], ["tests/integration/test_cli.py"]]


def test_an_option_s_value_is_no_path(layers: ModuleType) -> None:
    assert runs(layers, "--deselect", "tests/integration/test_image.py") == [
        ["-q", "tests/unit", "--deselect", "tests/integration/test_image.py"],
        ["tests/integration", "--deselect", "tests/integration/test_image.py"]]


def test_nothing_matched_anywhere_fails(layers: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    codes = iter([layers.NO_TESTS_COLLECTED, layers.NO_TESTS_COLLECTED])
    monkeypatch.setattr(layers.subprocess, "call", lambda *_a, **_k: next(codes))
    assert layers.main(["-k", "no_such_test"]) == layers.NO_TESTS_COLLECTED
    assert "no test matched" in capsys.readouterr().err


def test_a_layer_without_matches_is_fine_when_the_other_ran(
        layers: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    codes = iter([layers.NO_TESTS_COLLECTED, 0])
    monkeypatch.setattr(layers.subprocess, "call", lambda *_a, **_k: next(codes))
    assert layers.main(["-k", "reconnect"]) == 0


def test_a_failing_unit_layer_stops_the_run(layers: ModuleType,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def call(command: list[str], **_kwargs: object) -> int:
        calls.append(command)
        return 1

    monkeypatch.setattr(layers.subprocess, "call", call)
    assert layers.main([]) == 1
    assert len(calls) == 1 and "tests/unit" in calls[0]
