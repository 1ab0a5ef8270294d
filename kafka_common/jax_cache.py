"""JAX's persistent compilation cache, on by default for every process of the service.

A new process (a CLI run, a restarted worker or trainer job) would otherwise compile every jitted
program again; with the cache it loads the compiled programs from disk. One setting, the
environment variable `GMM_JAX_CACHE_DIR`, read by the entry points (never by the model code
in `mixture/`; `gmm-classify` reads it through `cache_dir_from_env`):

- `auto` (the default): `$JAX_COMPILATION_CACHE_DIR` when that is set (JAX reads it itself),
  else `$XDG_CACHE_HOME/gmm-stream/jax`, else `~/.cache/gmm-stream/jax`;
- a path: that directory, whatever `JAX_COMPILATION_CACHE_DIR` says;
- `off` or empty: no persistent cache at all (not even `JAX_COMPILATION_CACHE_DIR`'s).

Every program is cached, however quick its compilation (JAX's default keeps only those over one
second), unless `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` or
`JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES` is set. A directory that cannot be created or written
costs one warning line and the process runs without the cache. The cache only ever saves
compilations: deleting it is always safe.

The cache holds native code that this process will run, and JAX reads its entries itself, so we
cannot authenticate them (unlike `mixture.program_cache`'s files): the directory rule of
`mixture.cache_dir` is their only protection. A directory another user could write (not owned by
the effective user, writable by group or others, or in a parent another user can write) costs
one warning line and the cache is not enabled; a directory the process creates is mode 0700,
missing parents included.

Call `enable_compilation_cache` at process start, before anything is compiled.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from mixture.cache_dir import UntrustedCacheError, check_private_dir, make_private_dir

log = logging.getLogger(__name__)

ENV = "GMM_JAX_CACHE_DIR"
AUTO = "auto"
OFF = ("", "off")
#: JAX's own variable for the cache directory, honoured under `auto`.
JAX_ENV = "JAX_COMPILATION_CACHE_DIR"
#: JAX's thresholds for what is worth caching; we cache everything unless these are set.
_THRESHOLDS = (
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)
#: JAX's file names for an entry's compiled program and its last access time (`lru_cache`).
_CACHE_SUFFIX = "-cache"
_ATIME_SUFFIX = "-atime"
#: Directories already warned about: a second call (the trainer CLI, then its job) stays quiet.
_warned: set[str] = set()


def default_cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """`$XDG_CACHE_HOME/gmm-stream/jax`, or `~/.cache/gmm-stream/jax` without XDG_CACHE_HOME."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gmm-stream", "jax")


def cache_dir_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The value of GMM_JAX_CACHE_DIR (`auto` when unset)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV, AUTO)


def resolve_cache_dir(
    directory: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The directory a GMM_JAX_CACHE_DIR value stands for; None: no cache."""
    environ = os.environ if environ is None else environ
    setting = AUTO if directory is None else directory.strip()
    if setting.lower() in OFF:
        return None
    if setting.lower() == AUTO:
        return environ.get(JAX_ENV) or default_cache_dir(environ)
    return os.path.expanduser(setting)


def _unusable(path: str) -> str | None:
    """Why `path` cannot hold the cache (created, mode 0700, if missing), worded to follow its
    name; None if it can: it can be written, and no other user can (`check_private_dir`)."""
    try:
        make_private_dir(path)
        check_private_dir(path)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except UntrustedCacheError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot be used ({exc.strerror or exc})"
    return None


#: The cache's size bound (JAX_COMPILATION_CACHE_MAX_SIZE overrides it).
MAX_CACHE_BYTES = 1 << 30


def enable_compilation_cache(
    directory: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """Points JAX's persistent compilation cache at `directory` (a GMM_JAX_CACHE_DIR value; None
    is `auto`) and returns the directory in use, or None when the cache is off. Never raises for
    an unusable or untrusted directory: it logs one warning and turns the cache off."""
    import jax  # here, so that importing this module (and `--help`) stays cheap

    environ = os.environ if environ is None else environ
    path = resolve_cache_dir(directory, environ)
    if path is not None and (reason := _unusable(path)) is not None:
        if path not in _warned:
            _warned.add(path)
            log.warning(
                "JAX compilation cache off: %s %s; set %s to a private, writable "
                "directory or to off",
                path,
                reason,
                ENV,
            )
        path = None
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in environ:
        # Every program is cached (auto K, padded window sizes): bounded, least recently used
        # entries go first.
        jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
    if getattr(jax.config, "jax_compilation_cache_max_size") != -1:  # noqa: B009 (untyped)
        repaired = repair_access_times(path)
        if repaired:
            log.info("JAX compilation cache %s: %d entries given an access time", path, repaired)
    for name in _THRESHOLDS:
        if name.upper() not in environ:
            jax.config.update(name, 0)
    return path


def repair_access_times(path: str) -> int:
    """Gives each entry of the cache at `path` that has no access-time file one (the oldest
    time: evicted first), and returns how many. A process whose JAX cache is unbounded (JAX's
    default, e.g. one pointed at the directory by JAX_COMPILATION_CACHE_DIR alone) writes
    entries without it; a bounded process's eviction scan then fails on the first such entry
    (FileNotFoundError), so each of its writes failed and nothing new was cached again."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return 0
    repaired = 0
    for name in names:
        key = name.removesuffix(_CACHE_SUFFIX)
        if key == name or key + _ATIME_SUFFIX in names:
            continue
        try:
            with open(os.path.join(path, key + _ATIME_SUFFIX), "xb") as f:
                f.write((0).to_bytes(8, "little"))
            repaired += 1
        except FileExistsError:  # written meanwhile by the entry's own writer
            continue
        except OSError:  # unwritable: JAX's own write will say so
            break
    return repaired


def enable_fit_caches(
    directory: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """JAX's compilation cache (enable_compilation_cache) and, in its `programs/` subdirectory,
    the fit's traced programs (mixture.fit.use_program_cache), for processes that fit: a new
    process then neither traces nor compiles a fit it has run before. Returns the directory in
    use, or None when both are off."""
    from mixture.fit import use_program_cache  # here: the model stays out of `--help`'s imports

    path = enable_compilation_cache(directory, environ)
    use_program_cache(None if path is None else os.path.join(path, "programs"))
    return path


def jax_cache_dir_field() -> Any:
    """The `GMM_JAX_CACHE_DIR` setting, for every process's settings class."""
    from kafka_common.settings import env_field

    return env_field(
        "GMM_JAX_CACHE_DIR",
        "auto",
        "JAX's persistent compilation cache, for fast restarts (safe to delete); auto: "
        "$JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/gmm-stream/jax or "
        "~/.cache/gmm-stream/jax; off: no cache",
    )
