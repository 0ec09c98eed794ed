"""``python -m token_worker``: the worker's command line, as ``token-worker`` runs it."""

from __future__ import annotations

import sys

from token_worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
