"""A disk cache of traced JAX programs (`jax.export`), so a new process skips Python tracing.

JAX's persistent compilation cache already spares a new process the XLA compilation, but not
the tracing of the NumPyro/funsor Python that produces each program (most of a small fit's
start-up). `ProgramCache` stores each traced program as serialised StableHLO, keyed by
everything that shapes it; a later process deserialises it instead of tracing, and does not
even call its builder (which may be costly itself: model set-up, guide prototypes).

The cache is an optimisation only: an unreadable, damaged, unauthenticated or incompatible
file, an unwritable or untrusted directory or a program that cannot be serialised falls back to
the traced program with a warning, never an error. Serialisation needs the `flatbuffers`
package. Pytrees may hold None, lists, tuples, string-keyed dicts and NamedTuples (other custom
nodes need `jax.export.register_pytree_node_serialization`).

A loaded program runs as this process, so the cache trusts only what this install wrote: the
directory must be private (owned by the effective user, not writable by group or others, a
parent no other user can write: `mixture.cache_dir`), else it is not used at all (one warning,
programs traced); and each file is authenticated with HMAC-SHA256 under a per-install key, 32
random bytes in `<directory>/.key` (mode 0600, created by the first process). A checksum only
catches damage; the HMAC also refuses a file forged by someone without the key, or a genuine file
moved to another program's name (the file name is authenticated too).

A file is a magic line, the HMAC of the magic, the file name and the rest (a truncated, damaged
or forged file never reaches the deserialiser), a JSON line, then the `Exported.serialize()`
bytes. The JSON names the NamedTuple types of the program's inputs and outputs, registered
before deserialising so that a new process can read outputs of types it has not passed in
(looked up among the modules already imported, never imported by a name read from a file: they
must be defined at module level), and which outputs are weakly typed, a property serialisation
drops and the loaded program restores, so that it returns what the traced function returns.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import jax
from jax import export as jax_export
from jax._src.lax import lax as _lax  # _convert_element_type: the one way to set weak_type

from mixture.cache_dir import (
    UntrustedCacheError,
    check_private_dir,
    install_key,
    make_private_dir,
)

log = logging.getLogger(__name__)

#: Libraries whose versions enter `source_salt`: any of them can change a traced program.
VERSIONED = ("jax", "jaxlib", "numpyro", "funsor", "optax")
#: Version 2 is authenticated (HMAC); files of version 1 (a SHA-256) are misses, overwritten.
_MAGIC = b"gmm-jaxexport-2\n"
_MAC_BYTES = hashlib.sha256().digest_size
_NO_STATIC: Mapping[str, Hashable] = MappingProxyType({})
_registry_lock = threading.Lock()
_registered: set[type] = set()
_warned_dirs: set[str] = set()


def source_salt(*modules: ModuleType | str) -> str:
    """A hash of the modules' source text and of the versions of `VERSIONED`: as the salt of a
    ProgramCache, any change to the code that builds the programs, or to the libraries that
    trace them, selects new files."""
    h = hashlib.sha256()
    for dist in VERSIONED:
        try:
            h.update(f"{dist}=={importlib.metadata.version(dist)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{dist} absent\n".encode())
    for module in modules:
        # The file is read, not imported: a process that loads every program need not import
        # what builds them.
        if isinstance(module, str):
            spec = importlib.util.find_spec(module)
            name, origin = module, spec.origin if spec is not None else None
        else:
            name, origin = module.__name__, getattr(module, "__file__", None)
        if origin is None:
            raise ValueError(f"no source file for module {name}")
        h.update(f"{name}\n".encode() + Path(origin).read_bytes())
    return h.hexdigest()


def register_namedtuples(*types: type) -> None:
    """Registers NamedTuple types for `jax.export` serialisation as "module.qualname", once
    (registering again, or a type registered elsewhere: no error)."""
    with _registry_lock:
        for nodetype in set(types) - _registered:
            name = f"{nodetype.__module__}.{nodetype.__qualname__}"
            try:
                jax_export.register_namedtuple_serialization(nodetype, serialized_name=name)
            except ValueError as exc:  # "Duplicate serialization registration ..."
                if "Duplicate" not in str(exc):
                    raise
            _registered.add(nodetype)


class ProgramCache:
    """Traced programs (jax.export, serialised StableHLO) on disk, keyed by everything that
    shapes them."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        salt: str = "",
        compiler_options: Callable[[], Mapping[str, str] | None] | None = None,
    ) -> None:
        """compiler_options: returns the XLA options a loaded program is compiled with (those
        its builder's jax.jit passes; serialisation keeps the program, not them). Called when a
        program is first loaded, not here: working out options may start JAX's backend."""
        self.directory = Path(directory)
        self.salt = salt
        self._compiler_options = compiler_options
        self._lock = threading.RLock()
        self._exported: dict[str, jax_export.Exported] = {}  # as a later process reads it
        #: key -> what runs it: the jitted Exported.call, or the built function if unexported.
        self._programs: dict[str, Callable[..., Any]] = {}
        self._keys: dict[tuple[Any, ...], str] = {}
        self._mac_key = self._open_directory()
        self._disk = self._mac_key is not None

    def _open_directory(self) -> bytes | None:
        """The install's HMAC key, once the directory is created (0700) and found private; None,
        with one warning, when it cannot be created or is not to be trusted."""
        try:
            make_private_dir(self.directory)
        except OSError as exc:
            self._warn_dir(
                f"program cache {self.directory}: cannot create it: {exc}; traced "
                "programs not stored"
            )
            return None
        try:
            check_private_dir(self.directory)
            return install_key(self.directory)
        except (UntrustedCacheError, OSError) as exc:
            self._warn_dir(
                f"program cache {self.directory} {_reason(exc)}: not used, programs are traced"
            )
            return None

    def call(
        self,
        name: str,
        build: Callable[[], Callable[..., Any]],
        args: tuple[Any, ...],
        static: Mapping[str, Hashable] = _NO_STATIC,
    ) -> Any:
        """Returns build()(*args, **static)'s result. On first use in a process for a given key,
        loads the exported program from disk if present and valid, else builds the jitted
        function (build() returns a jax.jit-wrapped function; `static` are its static kwargs),
        exports it for these argument shapes/dtypes/pytree structure, writes it atomically, and
        uses it. Later calls with the same key reuse the in-memory Exported (no disk access)."""
        key = self.key(name, args, static)
        program = self._programs.get(key)
        if program is not None:
            return program(*args)
        with self._lock:
            program = self._programs.get(key) or self._load(name, key, args)
        if program is None:
            return self._build(name, key, build, args, static)(*args)
        try:  # its first call compiles what was read from disk: it may not suit this machine
            return program(*args)
        except Exception as exc:
            log.warning("cached program %s unusable (%s): tracing it again", name, exc)
            with self._lock:
                if self._programs.get(key) is program:
                    del self._programs[key]
            return self._build(name, key, build, args, static)(*args)

    @property
    def persistent(self) -> bool:
        """Whether programs go to disk (False: the directory could not be created, or is not
        private, or its key file is not to be trusted)."""
        return self._disk

    def prune(self, idle_s: float = 86400.0) -> int:
        """Deletes the files of other salts (older code or libraries) neither written nor loaded
        for idle_s, and temporary files over an hour old (a writer that died); returns how
        many. Files of this salt stay; without a salt, nothing is pruned. A load marks its file
        used, so two versions of the code sharing the directory (a rolling upgrade) keep each
        other's programs while both run, instead of deleting them at every start."""
        if not self._disk or not self.salt:
            return 0
        now = time.time()
        stale = []
        for path in self.directory.glob("*.jaxexport"):
            with contextlib.suppress(OSError):
                if not path.name.startswith(self._prefix) and now - path.stat().st_mtime > idle_s:
                    stale.append(path)
        for tmp in self.directory.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > 3600:
                    stale.append(tmp)
        removed = 0
        for path in stale:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        return removed

    @property
    def _prefix(self) -> str:
        return f"{self.salt[:12]}-" if self.salt else ""

    def __contains__(self, key: str) -> bool:
        """Whether the program for `key` is ready in this process (loaded or traced)."""
        return key in self._programs

    def key(self, name: str, args: tuple[Any, ...], static: Mapping[str, Hashable]) -> str:
        """SHA-256 over the salt, the name, the static values (repr), the pytree structure, each
        leaf's shape, dtype and weak type, the backend, the x64 flag and jax's version."""
        leaves, treedef = jax.tree.flatten(args)
        avals = tuple(
            (a.shape, a.dtype, getattr(a, "weak_type", False)) for a in map(jax.typeof, leaves)
        )
        items = tuple(sorted(static.items()))
        # JAX settings that change what a function traces to, beyond the arguments.
        flags = tuple(
            str(getattr(jax.config, flag))
            for flag in (
                "jax_enable_x64",
                "jax_default_matmul_precision",
                "jax_threefry_partitionable",
            )
        )
        memo = (name, items, treedef, avals, flags)  # hashing this is cheaper than the digest
        key = self._keys.get(memo)
        if key is None:
            parts = [self.salt, name, repr(items), str(treedef)]
            parts += [f"{shape}|{dtype}|{weak}" for shape, dtype, weak in avals]
            parts += [jax.default_backend(), *flags, jax.__version__]
            key = self._keys[memo] = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        return key

    def path(self, name: str, key: str) -> Path:
        """Where the program for `key` lives: <directory>/[<salt[:12]>-]<name>-<key[:32]>.jaxexport
        (the salt's prefix lets `prune` tell other code's files apart)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return self.directory / f"{self._prefix}{safe}-{key[:32]}.jaxexport"

    def _load(self, name: str, key: str, args: tuple[Any, ...]) -> Callable[..., Any] | None:
        """The program stored for `key`, or None (absent, damaged, or not for these args)."""
        path = self.path(name, key)
        try:
            data = path.read_bytes() if self._disk else None
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("cannot read cached program %s: %s", path, exc)
            data = None
        if data is None:
            return None
        try:
            meta, payload = self._unwrap(path, data)
            register_namedtuples(*(_resolve(*n) for n in meta["namedtuples"]))
            exported = jax_export.deserialize(bytearray(payload))
            in_tree: Any = exported.in_tree
            avals = [(a.shape, a.dtype) for a in map(jax.typeof, jax.tree.leaves(args))]
            if in_tree != jax.tree.structure((args, {})) or avals != [
                (a.shape, a.dtype) for a in exported.in_avals
            ]:
                raise ValueError("exported for other arguments")
            if len(meta["weak_out"]) != len(exported.out_avals):
                raise ValueError("weak types do not match the outputs")
        except Exception as exc:
            log.warning("ignoring cached program %s (%s): tracing it again", path, exc)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used: `prune` keeps it
        return self._use(key, exported, meta["weak_out"])

    def _build(
        self,
        name: str,
        key: str,
        build: Callable[[], Callable[..., Any]],
        args: tuple[Any, ...],
        static: Mapping[str, Hashable],
    ) -> Callable[..., Any]:
        """Traces the built function for `args` and stores it. Returns the exported program as
        read back from its own bytes (what a later process gets), or the built function if it
        cannot be exported."""
        with self._lock:
            ready = self._programs.get(key)  # another thread built it meanwhile
            if ready is not None:
                return ready
            fn = build()
            try:
                exported = jax_export.export(fn)(*args, **static)  # type: ignore[arg-type]
                types = _namedtuple_types(exported.in_tree) | _namedtuple_types(exported.out_tree)
                register_namedtuples(*types)
                payload = exported.serialize()
                weak_out = [bool(getattr(a, "weak_type", False)) for a in exported.out_avals]
                meta = {
                    "namedtuples": sorted([t.__module__, t.__qualname__] for t in types),
                    "weak_out": weak_out,
                }
                program = self._use(key, jax_export.deserialize(payload), weak_out)
            except Exception as exc:
                log.warning("program %s not exportable, not cached (%s)", name, exc)
                self._programs[key] = functools.partial(fn, **static)
                return self._programs[key]
            if self._disk:
                self._write(self.path(name, key), payload, meta)
            return program

    def _options(self) -> dict[str, Any] | None:
        options = self._compiler_options() if self._compiler_options else None
        return dict(options) if options else None

    def _use(self, key: str, exported: jax_export.Exported, weak_out: list[bool]) -> Any:
        """The program to run an Exported: its call, weak types restored, jitted (Exported.call
        alone binds its primitive anew on every call, ~1 ms; jitted, it is one dispatch)."""

        def run(*args: Any) -> Any:
            leaves, treedef = jax.tree.flatten(exported.call(*args))
            return jax.tree.unflatten(
                treedef,
                [
                    _lax._convert_element_type(x, weak_type=True) if weak else x
                    for x, weak in zip(leaves, weak_out, strict=True)
                ],
            )

        self._exported[key] = exported
        self._programs[key] = functools.partial(
            _call_committed,
            jax.jit(
                run if any(weak_out) else exported.call,
                compiler_options=self._options(),
            ),
        )
        return self._programs[key]

    def _write(self, path: Path, payload: bytes | bytearray, meta: Mapping[str, Any]) -> None:
        """Writes atomically: a temporary file in the same directory, then os.replace (the
        last writer wins; a reader sees a whole file or none)."""
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                body = json.dumps(meta).encode() + b"\n" + bytes(payload)
                f.write(_MAGIC + self._mac(path, body) + body)
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            self._warn_dir(
                f"program cache {self.directory}: cannot write {path.name}: {exc}; traced "
                "programs not stored"
            )
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _mac(self, path: Path, body: bytes) -> bytes:
        """HMAC-SHA256, under the install's key, of the magic, the file's name and `body`: only
        this install can write a file that verifies, and only under the name it wrote."""
        if self._mac_key is None:
            raise ValueError("no key: the cache is not on disk")
        message = _MAGIC + path.name.encode() + b"\0" + body
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _unwrap(self, path: Path, data: bytes) -> tuple[dict[str, Any], bytes]:
        """The metadata and the payload of the file `path` whose bytes are `data`, once its HMAC
        verifies (compared in constant time)."""
        head = len(_MAGIC) + _MAC_BYTES
        if len(data) < head or not data.startswith(_MAGIC):
            raise ValueError("not a program cache file of this format")
        if not hmac.compare_digest(self._mac(path, data[head:]), data[len(_MAGIC) : head]):
            raise ValueError("not authenticated: damaged, or not written under this install's key")
        meta, _, payload = data[head:].partition(b"\n")
        return json.loads(meta), payload

    def _warn_dir(self, message: str) -> None:
        """Logs `message`, the first time only for this directory in this process."""
        with _registry_lock:
            first = str(self.directory) not in _warned_dirs
            _warned_dirs.add(str(self.directory))
        if first:
            log.warning("%s", message)


def _reason(exc: Exception) -> str:
    """Why a directory is not used, worded to follow its name."""
    if isinstance(exc, UntrustedCacheError):
        return str(exc)
    return f"cannot be used ({exc})"


def _call_committed(program: Callable[..., Any], *args: Any) -> Any:
    """Calls `program` with every uncommitted device array committed to where it lies.

    An exported program's outputs are committed (a plain jitted function's are not, for
    uncommitted inputs), and a jitted function compiles again when an argument's commitment
    changes: without this, feeding a program its own outputs (a state) would compile it twice.
    """
    leaves, treedef = jax.tree.flatten(args)
    loose = [
        i
        for i, x in enumerate(leaves)
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.committed
    ]
    if loose:
        placed = jax.device_put([leaves[i] for i in loose], [leaves[i].sharding for i in loose])
        for i, x in zip(loose, placed, strict=True):
            leaves[i] = x
        args = jax.tree.unflatten(treedef, leaves)
    return program(*args)


def _namedtuple_types(treedef: Any) -> set[type]:
    """The NamedTuple node types in a PyTreeDef."""
    found, stack = set(), [treedef]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None and issubclass(data[0], tuple) and hasattr(data[0], "_fields"):
            found.add(data[0])
        stack.extend(node.children())
    return found


def _resolve(module: str, qualname: str) -> type:
    """A NamedTuple type by name, from a module already imported."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise ValueError(f"NamedTuple {module}.{qualname} not among the imported modules")
    return obj
