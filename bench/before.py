"""An earlier commit's code beside this one, for the A/B figures (``make bench-ab``).

``tree(rev)`` extracts the commit (``git archive``) into ``bench/data/before-<commit>/`` once and
reuses it; ``bench/data/`` is ignored by git. Both sides run with this checkout's interpreter and
virtualenv (the same libraries), each with its own tree first on the path: ``PYTHONPATH`` is the
tree and commands run from it, which wins over the editable install (its finder comes after
``sys.path``). ``check_imports`` verifies that before anything is measured.

Alone: ``python bench/before.py [--before REV]`` prints the tree's directory.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The commit before issue 16 (replay twice as fast): the issue's figures are measured against it.
BASE = "94f1b90"
DATA = ROOT / "bench" / "data"
#: The packages of a tree that its commands import.
PACKAGES = ("worker", "config", "tasks")


@dataclass(frozen=True)
class Tree:
    """One side of an A/B comparison: a name for the output, a commit and its files."""

    name: str
    commit: str
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a command running this tree's code."""
        return {**os.environ, "PYTHONPATH": str(self.root), **extra}

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run ``python ARGS`` on this tree's code, from its root; return its standard output."""
        done = subprocess.run(
            [sys.executable, *args], cwd=self.root, env=env or self.env(),
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{self.name}: {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done.stdout


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def now() -> Tree:
    """This checkout, as it is (uncommitted changes included)."""
    try:
        commit = git("rev-parse", "HEAD")
    except SystemExit:  # not a git checkout: the figures still mean "the code here"
        commit = "unknown"
    return Tree("now", commit, ROOT)


def tree(rev: str = BASE) -> Tree:
    """The files of commit ``rev``, extracted once under bench/data/."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    target = DATA / f"before-{commit[:7]}"
    if not target.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        # Extracted beside the target, then renamed: a run stopped halfway leaves no partial tree.
        partial = Path(tempfile.mkdtemp(prefix=f".before-{commit[:7]}-", dir=DATA))
        try:
            archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit],
                                       stdout=subprocess.PIPE)  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(partial)], stdin=archive.stdout, check=True)
            if archive.wait() != 0:
                raise SystemExit(f"git archive {commit} failed")
            try:
                partial.rename(target)
            except OSError:  # another run extracted it meanwhile
                if not target.exists():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        print(f"extracted {rev} ({commit[:7]}) into {target}", file=sys.stderr)
    return Tree("before", commit, target)


def check_imports(side: Tree) -> None:
    """Fail unless the tree's commands import its own packages (not the editable install's)."""
    code = "".join(f"import {name}; print({name}.__file__)\n" for name in PACKAGES)
    for path in side.run("-c", code).split():
        if not Path(path).resolve().is_relative_to(side.root.resolve()):
            raise SystemExit(f"{side.name}: imported {path}, not from {side.root}")


def prepare(side: Tree) -> None:
    """Check the imports and compile the tree's modules, so that no measured run pays for it."""
    check_imports(side)
    for name in PACKAGES:
        compileall.compile_dir(side.root / name, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default=BASE, metavar="REV", help=f"default {BASE}")
    args = parser.parse_args()
    side = tree(args.before)
    check_imports(side)
    print(side.root)


if __name__ == "__main__":
    main()
