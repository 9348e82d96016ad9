"""Files a command writes: checked before any work, put in place only when the command succeeds."""

from __future__ import annotations

import functools
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from worker.cli.common import CommandError

__all__ = ["Outputs", "writes_files"]

F = TypeVar("F", bound=Callable[..., Any])


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same inode if both exist (links, relative paths)."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one does not exist (yet): where they would resolve to
        return os.path.realpath(first) == os.path.realpath(second)


class Outputs:
    """The files one command writes, as a context manager around all of its work.

    ``add`` checks an output before any work is done: it may not be (or resolve to) one of the
    command's inputs or another of its outputs, and its directory must take a new file. The
    command then writes to the returned path: a temporary file beside the target (the same
    directory, so the rename is atomic), renamed over the target when the block ends without an
    error. On an error or Ctrl-C it is removed and the target is left as it was. A target that
    exists and is not a regular file (``/dev/null``, a pipe) is written in place.
    """

    def __init__(self, inputs: Iterable[tuple[str, Path | None]]) -> None:
        #: (what it is, path): "the input file", "the --rules file" ...
        self._inputs = [(label, path) for label, path in inputs if path is not None]
        #: (option, path as given, target, where it is written)
        self._outputs: list[tuple[str, Path, Path, Path]] = []

    def add(self, option: str, path: Path | None) -> Path | None:
        """The path to write ``option``'s output to; a one-line error if it cannot be."""
        if path is None:
            return None
        taken = [*self._inputs, *((f"the {o} file", given) for o, given, _, _ in self._outputs)]
        for label, other in taken:
            if _same_file(path, other):
                raise CommandError(f"{option} {path}: is {label} {other}: choose another file")
        target = Path(os.path.realpath(path))  # through a symlink: replace the file it names
        try:
            mode = target.stat().st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            if not os.access(target, os.W_OK):
                raise CommandError(f"{option} {path}: cannot write: Permission denied")
            self._outputs.append((option, path, target, target))
            return target
        written = target.with_name(f".{secrets.token_hex(4)}.{target.name}")  # same suffixes
        try:
            os.close(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as error:
            raise CommandError(f"{option} {path}: cannot write: {error.strerror}") from None
        if mode is not None:  # replaced, the file keeps its permissions
            os.chmod(written, stat.S_IMODE(mode))
        self._outputs.append((option, path, target, written))
        return written

    def __enter__(self) -> Outputs:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outputs, self._outputs = self._outputs, []
        failed: CommandError | None = None
        for option, path, target, written in outputs:
            if written == target:
                continue
            if kind is None and failed is None:
                try:
                    os.replace(written, target)
                    continue
                except OSError as error:
                    failed = CommandError(f"{option} {path}: cannot write: {error.strerror}")
            written.unlink(missing_ok=True)
        if failed is not None:
            raise failed


def writes_files(outputs: dict[str, str], inputs: dict[str, str]) -> Callable[[F], F]:
    """Run a command inside ``Outputs``: put right above its function, below click's decorators.

    ``outputs`` maps parameters that name files it writes to their option (``{"output":
    "--output"}``); the function receives the path to write each to instead. ``inputs`` maps
    parameters that name files it reads (a path or a tuple of paths) to what they are called in
    an error ("the input file").
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(**params: Any) -> Any:
            read: list[tuple[str, Path | None]] = []
            for name, label in inputs.items():
                value = params[name]
                read += [(label, path) for path in (value if isinstance(value, tuple) else [value])]
            with Outputs(read) as files:
                for name, option in outputs.items():
                    params[name] = files.add(option, params[name])
                return command(**params)

        return cast(F, run)

    return decorate
