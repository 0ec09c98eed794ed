"""The benchmark's compiled programs, built from benchmarks/c and benchmarks/go into the
git-ignored benchmarks/.build when their compiler is found; what could not be built is
said, and the rows that need it are skipped."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
BUILD = BENCHMARKS / ".build"


@dataclass
class Programs:
    null_responder: str | None = None
    """The C null responder: answers with a fixed body, does no work."""
    skipped: list[str] = field(default_factory=list)
    """One sentence per program not built: what is missing and what it costs."""


def build() -> Programs:
    BUILD.mkdir(exist_ok=True)
    programs = Programs()
    programs.null_responder = _build_c(BENCHMARKS / "c" / "null-responder.c", programs)
    return programs


def _build_c(source: Path, programs: Programs) -> str | None:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        programs.skipped.append("no C compiler (cc, gcc or clang): the null responder (n) "
                                "is skipped")
        return None
    binary = BUILD / source.stem
    done = subprocess.run([compiler, "-O2", "-Werror=implicit-function-declaration", "-o",
                           str(binary), str(source)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        programs.skipped.append(f"{source.name} did not compile: the null responder (n) is "
                                f"skipped\n{done.stderr.strip()}")
        return None
    return str(binary)
