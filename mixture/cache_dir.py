"""Trust in a cache directory: what is loaded from it runs as this process, so a directory that
another user can write is not used at all, and `ProgramCache` authenticates its files under a key
kept there.

The rule (`check_private_dir`), for the directory with symlinks resolved:

- the directory is owned by the effective user and not writable by group or others
  (mode & 0o022 == 0);
- its parent is owned by the effective user or root and not writable by group or others, unless
  it is sticky (as /tmp is: others cannot rename or replace what they do not own in it).

Only the directory and its parent are checked: a directory higher up that another user can write
(and so could swap the parent) is for the operator to avoid. Directories the process creates
(`make_private_dir`) are mode 0700, missing parents included.

The key (`install_key`) is 32 random bytes in `<directory>/.key`, created mode 0600 by the first
process to find it absent. An existing key file is used only if the effective user owns it and its
mode is exactly 0600.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

#: The per-install key's file, inside the cache directory.
KEY_FILE = ".key"
KEY_BYTES = 32
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UntrustedCacheError(Exception):
    """A cache directory or key file that another user could have written; the message says
    why, in words that follow the directory's name ("... is writable by others ...")."""


def make_private_dir(path: str | os.PathLike[str]) -> None:
    """Creates `path` and each missing parent, mode 0700 (os.makedirs would give the parents the
    umask's default, often 0755 or 0775, and a group-writable parent is refused). Raises OSError
    when a component cannot be created; an existing directory is left as it is."""
    missing = []
    current = Path(path).absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent process created it
            directory.mkdir(mode=0o700)


def check_private_dir(path: str | os.PathLike[str]) -> None:
    """Raises UntrustedCacheError unless `path` (symlinks resolved) and its parent follow the
    rule in the module's docstring; OSError if either cannot be inspected."""
    real = Path(os.path.realpath(path))
    euid = os.geteuid()
    st = os.stat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedCacheError("is not a directory")
    if st.st_uid != euid:
        raise UntrustedCacheError(f"is owned by uid {st.st_uid}, not by this user (uid {euid})")
    if st.st_mode & _OTHERS_WRITE:
        raise UntrustedCacheError(f"is writable by group or others (mode {_mode(st)})")
    parent = os.stat(real.parent)
    if parent.st_uid not in (euid, 0):
        raise UntrustedCacheError(
            f"has a parent, {real.parent}, owned by uid {parent.st_uid} (neither this user nor "
            "root)"
        )
    if parent.st_mode & _OTHERS_WRITE and not parent.st_mode & stat.S_ISVTX:
        raise UntrustedCacheError(
            f"has a parent, {real.parent}, writable by group or others (mode {_mode(parent)}, "
            "not sticky)"
        )


def install_key(directory: str | os.PathLike[str]) -> bytes:
    """The install's HMAC key from `<directory>/.key`, created (32 random bytes, mode 0600) if
    absent. Raises UntrustedCacheError for a key file of another owner, of a mode other than
    0600 or of the wrong size, OSError if it cannot be read or created."""
    path = Path(directory) / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        _create_key(path)
        return _read_key(path)


def _create_key(path: Path) -> None:
    """Writes a new key to a temporary file (mkstemp: mode 0600, O_EXCL) and links it into
    place: the link never replaces an existing key, and a reader never sees a partial one. Of
    two processes creating it at once, the first to link wins and both use its key."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _read_key(path: Path) -> bytes:
    """The key in `path`, checked (owner, mode 0600, size) on the open file, not following a
    symbolic link."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        euid = os.geteuid()
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedCacheError(f"has a key file, {path}, that is not a regular file")
        if st.st_uid != euid:
            raise UntrustedCacheError(
                f"has a key file, {path}, owned by uid {st.st_uid}, not by this user (uid {euid})"
            )
        if stat.S_IMODE(st.st_mode) != 0o600:
            raise UntrustedCacheError(f"has a key file, {path}, of mode {_mode(st)}, not 0600")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise UntrustedCacheError(f"has a key file, {path}, of {len(key)} bytes, not {KEY_BYTES}")
    return key


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"
