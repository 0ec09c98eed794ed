"""A Secret volume updated exactly as the kubelet's AtomicWriter does it, for tests.

Each update writes a new ``..<timestamp>`` directory, points a ``..data_tmp`` symlink at
it and renames that over ``..data`` (the one atomic step), then adds the top-level
symlinks (``orders -> ..data/orders``) for new paths, removes those of vanished paths,
and deletes the previous timestamped directory.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

_counter = itertools.count()


class KubeletVolume:
    """``write({"orders/client_id": "...", ...})`` publishes a whole new payload."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _current(self) -> str | None:
        link = self.root / "..data"
        return os.readlink(link) if link.is_symlink() else None

    def write(self, files: dict[str, str]) -> None:
        old = self._current()
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime())
        target = f"{stamp}.{time.time_ns() % 10**9:09d}{next(_counter)}"
        for relative, content in files.items():
            path = self.root / target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        temporary = self.root / "..data_tmp"
        os.symlink(target, temporary)
        os.rename(temporary, self.root / "..data")
        top = {relative.split("/", 1)[0] for relative in files}
        for name in sorted(top):
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
        for entry in os.listdir(self.root):
            if not entry.startswith(".") and entry not in top:
                os.unlink(self.root / entry)
        if old is not None:
            shutil.rmtree(self.root / old, ignore_errors=True)


def credential_files(name: str, client_id: str, client_secret: str,
                     **optional: str) -> dict[str, str]:
    """The files of one credential as a Secret with a trailing newline would give them."""
    files = {f"{name}/client_id": client_id + "\n", f"{name}/client_secret": client_secret + "\n"}
    files.update({f"{name}/{key}": value + "\n" for key, value in optional.items()})
    return files
