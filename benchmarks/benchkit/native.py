"""The benchmark's compiled programs, built from benchmarks/c and benchmarks/go into the
git-ignored benchmarks/.build when their compiler is found; what could not be built is
said, and the rows that need it are skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
BUILD = BENCHMARKS / ".build"
DEBIAN_GOPATH = "/usr/share/gocode"
"""Where Debian's golang-*-dev packages put Go sources (GOPATH mode)."""
GO_PACKAGES = "golang-go golang-github-nats-io-go-nats-dev"


@dataclass
class Programs:
    null_responder: str | None = None
    """The C null responder: answers with a fixed body, does no work."""
    go_worker: str | None = None
    """benchmarks/go/cachedworker: token-worker's cache-hit job in Go (nats.go)."""
    closed_loop: str | None = None
    """benchmarks/go/closedloop: the closed-loop load generator (nats.go)."""
    go_version: str = ""
    skipped: list[str] = field(default_factory=list)
    """One sentence per program not built: what is missing and what it costs."""


def build() -> Programs:
    BUILD.mkdir(exist_ok=True)
    programs = Programs()
    programs.null_responder = _build_c(BENCHMARKS / "c" / "null-responder.c", programs)
    _build_go(programs)
    return programs


def _build_go(programs: Programs) -> None:
    """Both Go programs, in GOPATH mode against Debian's nats.go (or one on $GOPATH)."""
    cost = "the closed-loop scenario and the Go cached worker (g) are skipped"
    go = shutil.which("go")
    if not go:
        programs.skipped.append(f"no Go toolchain: {cost} (apt-get install -y {GO_PACKAGES})")
        return
    gopath = os.pathsep.join(p for p in (os.environ.get("GOPATH", ""), DEBIAN_GOPATH) if p)
    if not any((Path(p) / "src/github.com/nats-io/nats.go").is_dir()
               for p in gopath.split(os.pathsep)):
        programs.skipped.append(f"nats.go not found on GOPATH {gopath}: {cost} "
                                f"(apt-get install -y {GO_PACKAGES})")
        return
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": gopath, "GOFLAGS": "",
           "GOCACHE": str(BUILD / "go-cache")}
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=False)
    programs.go_version = version.stdout.strip().removeprefix("go version ")
    built = {}
    for name in ("cachedworker", "closedloop"):
        done = subprocess.run([go, "build", "-o", str(BUILD / name), f"./go/{name}"],
                              cwd=BENCHMARKS, env=env, capture_output=True, text=True,
                              check=False, timeout=600)
        if done.returncode:
            programs.skipped.append(f"go/{name} did not build: {cost}\n"
                                    f"{done.stderr.strip()}")
            return
        built[name] = str(BUILD / name)
    programs.go_worker, programs.closed_loop = built["cachedworker"], built["closedloop"]


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
