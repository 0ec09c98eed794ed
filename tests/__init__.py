"""token-worker's tests: ``tests/unit`` (no server, no nats-py, no Node) and
``tests/integration`` (real nats-server and IdP processes)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root."""
