"""Output folders that always say what they hold: checked before any work, written whole into a
temporary folder beside the target and swapped in only when complete, under a lock.

A folder that ``delift`` wrote carries :data:`MARKER`; a later run replaces such a folder whole
(no stale file of an earlier run survives). Any other non-empty folder is refused unless the
user says ``--overwrite``. A failed or interrupted write leaves the earlier folder as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from delift_core.errors import DeliftError

__all__ = ["MARKER", "OutputError", "check_output", "output_folder"]

logger = logging.getLogger(__name__)

MARKER = ".delift-output.json"
_EARLIER = ("manifest.json", "kernel_meta.json", "report.json")  # outputs written before the marker


class OutputError(DeliftError):
    """An output folder cannot be written (it names the path and the reason)."""


def _is_delift_output(path: Path) -> bool:
    return any((path / name).exists() for name in (MARKER, *_EARLIER))


def check_output(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot become this run's folder: a file, a
    path under a file, an unwritable parent, or a non-empty folder delift did not write (unless
    ``overwrite``). Returns the absolute path."""
    out = Path(path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {path}: is a file, not a folder")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"--out {path}: {parent} is a file, so no folder can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"--out {path}: {parent} is not writable")
    if out.is_dir() and not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"--out {path}: its parent {out.parent} is not writable")
    if out.is_dir() and any(out.iterdir()) and not _is_delift_output(out) and not overwrite:
        raise OutputError(f"--out {path}: the folder is not empty and was not written by delift; "
                          "choose another folder or pass --overwrite to replace it")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """An exclusive lock file beside ``out``; a second run fails fast (a dead run's lock is taken
    over)."""
    lock = out.parent / f".{out.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise OutputError(f"--out {out}: another delift run (process {pid}) is writing "
                                  f"this folder; wait for it or choose another folder "
                                  f"(lock: {lock})") from None
            lock.unlink(missing_ok=True)  # left by a run that died
    else:  # pragma: no cover - lost a race twice
        raise OutputError(f"--out {out}: could not take the lock {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def output_folder(path: str | Path, *, command: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without error it
    becomes ``path`` (replacing an earlier delift output whole), else it is removed and ``path``
    is left as it was."""
    out = check_output(path, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        check_output(path, overwrite=overwrite)  # again, now that no other run can change it
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"command": command, "written": time.time()}))
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
            logger.debug("wrote %s", out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
