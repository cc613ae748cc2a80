"""Checks of a config against this machine, made before any process starts (the schema cannot make them).

``check_out_dir``: the run directory exists as a writable directory, or can be created as one. It leaves
nothing behind: a probe file or directory is created and removed at once.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..echo import shown

_NAME_MAX = 255  # bytes of one path component on Linux, macOS and Windows file systems
_PATH_MAX = 4096


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EROFS,):
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOENT:  # /proc and other virtual file systems refuse new entries this way
        return "this file system does not take new files"
    return exc.strerror or type(exc).__name__


def check_out_dir(out_dir: str | os.PathLike, key: str = "run.out_dir",
                  advice: str = "set run.out_dir to a directory you can write, e.g. runs/NAME",
                  label: str | None = None) -> Path:
    """Raise :class:`ConfigError` naming ``key`` unless ``out_dir`` is, or can become, a writable directory.

    Catches what would otherwise stop node 0 after every node started: a path inside ``/proc`` or ``/sys``,
    under a regular file, on a read-only file system, without permission, or with a name too long.
    Messages start with ``label`` (default ``KEY=VALUE``) and end with ``advice`` (what to change).
    Returns the path.
    """
    path = Path(out_dir)
    where = label or f"{key}={shown(str(out_dir))}"
    if len(os.fsencode(str(path.absolute()))) > _PATH_MAX:
        raise ConfigError(f"{where}: the path is longer than {_PATH_MAX} bytes; {advice}")
    missing: list[str] = []
    existing = path.absolute()
    while True:
        try:
            if existing.exists() or existing.is_symlink():
                break
        except OSError as exc:  # e.g. a component name too long for the file system
            raise ConfigError(f"{where}: {_why(exc)}; {advice}") from None
        missing.append(existing.name)
        if existing.parent == existing:
            break
        existing = existing.parent
    for name in missing:
        if len(os.fsencode(name)) > _NAME_MAX:
            raise ConfigError(f"{where}: the directory name {shown(name)} is longer than {_NAME_MAX} bytes; "
                              f"{advice}")
    if not existing.is_dir():
        what = shown(str(existing)) + (", a part of the path," if missing else "")
        kind = ("a broken link" if existing.is_symlink() and not existing.exists()
                else "a file, not a directory" if existing.is_file() else "not a directory")
        raise ConfigError(f"{where}: {what} is {kind}; {advice}")
    try:
        if missing:  # the run would create directories here: try one
            os.rmdir(tempfile.mkdtemp(prefix=".qtd-probe-", dir=existing))
        else:  # the run would write files here: try one
            tempfile.TemporaryFile(prefix=".qtd-probe-", dir=existing).close()
    except OSError as exc:
        target = "create directories in" if missing else "write in"
        raise ConfigError(f"{where}: cannot {target} {shown(str(existing))} ({_why(exc)}); {advice}") from None
    return path
