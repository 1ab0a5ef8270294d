"""ProgramCache: traced programs stored with jax.export and loaded by a later process without
tracing (build never called), and every way the disk can let it down falling back to tracing."""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from jax import export as jax_export
from numpy.testing import assert_allclose
from numpyro import handlers
from numpyro.contrib.funsor import config_enumerate
from numpyro.infer import SVI, TraceEnum_ELBO
from numpyro.infer.autoguide import AutoDelta

from mixture import program_cache
from mixture.cache_dir import KEY_FILE, install_key
from mixture.params import Priors, seed_priors
from mixture.program_cache import ProgramCache, register_namedtuples, source_salt
from tests.conftest import ROOT


@pytest.fixture
def serialisable() -> None:
    """Serialisation needs flatbuffers: without it the cache is in-memory only, and the tests
    of the disk skip (fail under CI, GMM_CI set, where it must be installed)."""
    if importlib.util.find_spec("flatbuffers") is None:
        message = "flatbuffers is not installed (jax.export serialisation needs it)"
        if os.environ.get("GMM_CI"):
            pytest.fail(f"GMM_CI is set: {message}")
        pytest.skip(message)


needs_flatbuffers = pytest.mark.usefixtures("serialisable")


class Builds:
    """A build() that records its calls."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.fn


def scaled(x: Any, y: Any, power: int = 1) -> Any:
    return {"out": x * y["a"] ** power, "sum": jnp.sum(x) + y["b"]}


JIT_SCALED = jax.jit(scaled, static_argnames="power")
ARGS = (jnp.arange(3.0), {"a": jnp.float32(2.0), "b": 1.0})


def files(directory: Any) -> list[str]:
    """The directory's files but the install's key."""
    return sorted(p.name for p in directory.iterdir() if p.name != KEY_FILE)


def assert_trees_close(a: Any, b: Any, rtol: float = 1e-6) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol)


@needs_flatbuffers
def test_new_instance_loads_without_building(tmp_path):
    first, second = Builds(JIT_SCALED), Builds(JIT_SCALED)
    out1 = ProgramCache(tmp_path).call("scaled", first, ARGS, {"power": 2})
    (name,) = files(tmp_path)
    assert name.startswith("scaled-") and name.endswith(".jaxexport") and len(name) == 7 + 32 + 10
    out2 = ProgramCache(tmp_path).call("scaled", second, ARGS, {"power": 2})
    assert (first.calls, second.calls) == (1, 0)
    assert_trees_close(out1, JIT_SCALED(*ARGS, power=2))
    assert_trees_close(out2, out1)


@needs_flatbuffers
def test_later_calls_use_memory(tmp_path, monkeypatch):
    cache, build = ProgramCache(tmp_path), Builds(JIT_SCALED)
    cache.call("scaled", build, ARGS)
    monkeypatch.setattr(ProgramCache, "_load", lambda *a: pytest.fail("disk read"))
    for i in range(3):
        out = cache.call("scaled", build, (ARGS[0] + i, ARGS[1]))
        assert_trees_close(out, JIT_SCALED(ARGS[0] + i, ARGS[1]))
    assert build.calls == 1


@needs_flatbuffers
def test_keys_separate_what_shapes_a_program(tmp_path):
    build = Builds(JIT_SCALED)
    cache = ProgramCache(tmp_path)
    cache.call("scaled", build, ARGS)
    cache.call("scaled", build, ARGS)  # same: same file
    ProgramCache(tmp_path).call("scaled", build, (jnp.arange(3.0) + 1, ARGS[1]))  # same avals
    assert len(files(tmp_path)) == 1
    cache.call("scaled", build, (jnp.arange(4.0), ARGS[1]))  # shape
    cache.call("scaled", build, (jnp.arange(3, dtype=jnp.int32), ARGS[1]))  # dtype
    cache.call("scaled", build, (ARGS[0], {"a": jnp.float32(2.0), "b": jnp.float32(1)}))  # weak
    cache.call("scaled", build, ARGS, {"power": 3})  # static value
    cache.call("other", build, ARGS)  # name
    ProgramCache(tmp_path, salt="v2").call("scaled", build, ARGS)  # salt
    assert len(files(tmp_path)) == 7
    assert build.calls == 7


def test_source_salt_changes_with_modules():
    import mixture.fit
    import mixture.model

    salt = source_salt(mixture.fit, mixture.model)
    assert salt == source_salt("mixture.fit", "mixture.model")
    assert salt != source_salt(mixture.fit)
    assert len(salt) == 64


@needs_flatbuffers
@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"garbage" * 10,
        lambda data: data[: len(data) // 2],
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),
        lambda data: data[:40],
        lambda data: b"",
    ],
    ids=["garbage", "truncated", "bitflip", "header-only", "empty"],
)
def test_damaged_file_is_traced_again_and_rewritten(tmp_path, damage):
    ProgramCache(tmp_path).call("scaled", Builds(JIT_SCALED), ARGS)
    (path,) = (tmp_path / name for name in files(tmp_path))
    good = path.read_bytes()
    path.write_bytes(damage(good))
    build = Builds(JIT_SCALED)
    out = ProgramCache(tmp_path).call("scaled", build, ARGS)
    assert build.calls == 1
    assert_trees_close(out, JIT_SCALED(*ARGS))
    assert path.read_bytes() == good
    assert files(tmp_path) == [path.name]


@needs_flatbuffers
def test_file_for_other_arguments_is_rejected(tmp_path):
    small = (jnp.arange(3.0), ARGS[1])
    large = (jnp.arange(4.0), ARGS[1])
    cache = ProgramCache(tmp_path)
    cache.call("scaled", Builds(JIT_SCALED), small)
    small_path = cache.path("scaled", cache.key("scaled", small, {}))
    large_path = cache.path("scaled", cache.key("scaled", large, {}))
    large_path.write_bytes(small_path.read_bytes())
    build = Builds(JIT_SCALED)
    out = ProgramCache(tmp_path).call("scaled", build, large)
    assert build.calls == 1
    assert_trees_close(out, JIT_SCALED(*large))
    assert ProgramCache(tmp_path).call("scaled", Builds(None), large)["out"].shape == (4,)


@needs_flatbuffers
def test_program_that_fails_to_run_is_traced_again_once(tmp_path, caplog):
    """A file that deserialises but whose call raises (here: exported for another platform)."""
    cache = ProgramCache(tmp_path)
    exported = jax_export.export(JIT_SCALED, platforms=["cuda"])(*ARGS)
    path = cache.path("scaled", cache.key("scaled", ARGS, {}))
    weak_out = [a.weak_type for a in exported.out_avals]
    cache._write(path, exported.serialize(), {"namedtuples": [], "weak_out": weak_out})
    build = Builds(JIT_SCALED)
    with caplog.at_level(logging.WARNING, logger=program_cache.__name__):
        out = cache.call("scaled", build, ARGS)
        out_again = cache.call("scaled", build, ARGS)
    assert build.calls == 1
    assert "unusable" in caplog.text
    assert_trees_close(out, JIT_SCALED(*ARGS))
    assert_trees_close(out_again, out)
    _, payload = cache._unwrap(path, path.read_bytes())
    assert jax_export.deserialize(bytearray(payload)).platforms == ("cpu",)


def test_unwritable_directory_works_in_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    directory = blocker / "cache"
    with caplog.at_level(logging.WARNING, logger=program_cache.__name__):
        for _ in range(2):
            cache, build = ProgramCache(directory), Builds(JIT_SCALED)
            for _ in range(2):
                assert_trees_close(cache.call("scaled", build, ARGS), JIT_SCALED(*ARGS))
            assert build.calls == 1
    records = [r for r in caplog.records if r.name == program_cache.__name__]
    assert len(records) == 1 and str(directory) in records[0].getMessage()
    assert blocker.read_text() == "not a directory"


@needs_flatbuffers
def test_write_failure_is_not_raised(tmp_path, monkeypatch, caplog):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError("read-only")

    cache = ProgramCache(tmp_path / "ro")
    monkeypatch.setattr(program_cache.tempfile, "mkstemp", refuse)
    with caplog.at_level(logging.WARNING, logger=program_cache.__name__):
        assert_trees_close(cache.call("scaled", Builds(JIT_SCALED), ARGS), JIT_SCALED(*ARGS))
        cache.call("scaled", Builds(JIT_SCALED), (jnp.arange(5.0), ARGS[1]))
    records = [r for r in caplog.records if r.name == program_cache.__name__]
    assert len(records) == 1 and "read-only" in records[0].getMessage()
    assert files(tmp_path / "ro") == []


def test_unexportable_program_runs_traced(tmp_path):
    calls = []

    @jax.jit
    def with_callback(x: Any) -> Any:
        jax.debug.callback(lambda v: calls.append(v), x)
        return x + 1

    cache, build = ProgramCache(tmp_path), Builds(with_callback)
    for _ in range(2):
        assert_allclose(cache.call("cb", build, (jnp.ones(2),)), 2.0)
    assert build.calls == 1 and len(calls) == 2
    assert files(tmp_path) == []


@needs_flatbuffers
def test_concurrent_writers_never_expose_partial_files(tmp_path):
    cache = ProgramCache(tmp_path)
    cache.call("scaled", Builds(JIT_SCALED), ARGS)
    (path,) = (tmp_path / name for name in files(tmp_path))
    payloads = [
        jax_export.export(JIT_SCALED)(jnp.arange(float(n)), ARGS[1]).serialize() for n in (3, 300)
    ]
    stop, seen, errors = threading.Event(), set(), []

    def writer(payload: bytes) -> None:
        other = ProgramCache(tmp_path)
        while not stop.is_set():
            other._write(path, payload, {"namedtuples": [], "weak_out": []})

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(cache._unwrap(path, path.read_bytes())[1])
            except Exception as exc:  # pragma: no cover - the failure being tested for
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert seen <= {bytes(p) for p in payloads} and seen
    assert files(tmp_path) == [path.name]  # no temporary file left


# Trust: a loaded program runs as this process, so only this install's files, in a directory no
# other user can write, are loaded.

#: What a forger puts under the key of the genuine program (JIT_SCALED: out = [0, 2, 4]).
FORGED = jax.jit(lambda x, y: {"out": jnp.full_like(x, 42.0), "sum": jnp.sum(x) + y["b"]})
GENUINE_OUT = [0.0, 2.0, 4.0]
ANOTHER_UID = 12345


def forged_body() -> bytes:
    """A well-formed file body (JSON line, serialised program) for FORGED on ARGS."""
    exported = jax_export.export(FORGED)(*ARGS)
    meta = {"namedtuples": [], "weak_out": [a.weak_type for a in exported.out_avals]}
    return json.dumps(meta).encode() + b"\n" + bytes(exported.serialize())


def owned_by_another_user(path: Any, monkeypatch: Any) -> None:
    """Makes `path` another user's: chowned to ANOTHER_UID as root, else this process takes an
    effective uid that is not the owner's."""
    if os.geteuid() == 0:
        os.chown(path, ANOTHER_UID, -1)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + ANOTHER_UID)


def cache_warnings(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == program_cache.__name__]


@needs_flatbuffers
@pytest.mark.parametrize(
    "seal",
    [
        lambda name, body: hashlib.sha256(body).digest(),
        lambda name, body: hmac.new(
            secrets.token_bytes(32), program_cache._MAGIC + name + b"\0" + body, hashlib.sha256
        ).digest(),
    ],
    ids=["sha256", "another-key"],
)
def test_forged_entry_is_refused(tmp_path, caplog, seal):
    """A file of the right format under the key of `fit.winner`, but written without the
    install's key (with the checksum that used to suffice, or an HMAC under the forger's own key),
    is refused: the program is traced, the right answer comes back, the file is overwritten."""
    cache = ProgramCache(tmp_path)
    path = cache.path("fit.winner", cache.key("fit.winner", ARGS, {}))
    body = forged_body()
    path.write_bytes(program_cache._MAGIC + seal(path.name.encode(), body) + body)
    build = Builds(JIT_SCALED)
    with caplog.at_level(logging.WARNING, logger=program_cache.__name__):
        out = cache.call("fit.winner", build, ARGS)
    assert build.calls == 1
    assert_allclose(out["out"], GENUINE_OUT)
    (warning,) = cache_warnings(caplog)
    assert "not authenticated" in warning and path.name in warning
    assert_allclose(ProgramCache(tmp_path).call("fit.winner", Builds(None), ARGS)["out"], [0, 2, 4])


@needs_flatbuffers
def test_old_format_file_is_a_miss(tmp_path):
    """A file of the unauthenticated format (a SHA-256 of its body) is never loaded."""
    cache = ProgramCache(tmp_path)
    path = cache.path("fit.winner", cache.key("fit.winner", ARGS, {}))
    body = forged_body()
    path.write_bytes(b"gmm-jaxexport-1\n" + hashlib.sha256(body).digest() + body)
    build = Builds(JIT_SCALED)
    assert_allclose(cache.call("fit.winner", build, ARGS)["out"], GENUINE_OUT)
    assert build.calls == 1 and path.read_bytes().startswith(program_cache._MAGIC)


@needs_flatbuffers
def test_only_the_install_key_makes_a_file_loadable(tmp_path):
    """The control of the forgery tests: the same forged body, sealed under the install's key, is
    loaded (the key, not the format, is what refuses a forgery)."""
    cache = ProgramCache(tmp_path)
    path = cache.path("fit.winner", cache.key("fit.winner", ARGS, {}))
    meta_line, _, payload = forged_body().partition(b"\n")
    cache._write(path, payload, json.loads(meta_line))
    out = ProgramCache(tmp_path).call("fit.winner", Builds(None), ARGS)
    assert_allclose(out["out"], [42.0] * 3)


@needs_flatbuffers
def test_genuine_file_moved_to_another_name_is_refused(tmp_path):
    """The HMAC covers the file's name: this install's file for one program, copied under the
    key of another of the same signature, is refused."""
    cache = ProgramCache(tmp_path)
    cache.call("other", Builds(FORGED), ARGS)
    other = cache.path("other", cache.key("other", ARGS, {}))
    winner = cache.path("fit.winner", cache.key("fit.winner", ARGS, {}))
    winner.write_bytes(other.read_bytes())
    build = Builds(JIT_SCALED)
    assert_allclose(ProgramCache(tmp_path).call("fit.winner", build, ARGS)["out"], GENUINE_OUT)
    assert build.calls == 1


def _others_write(directory: Any, monkeypatch: Any) -> None:
    directory.chmod(0o777)


def _group_write(directory: Any, monkeypatch: Any) -> None:
    directory.chmod(0o770)


def _other_owner(directory: Any, monkeypatch: Any) -> None:
    owned_by_another_user(directory, monkeypatch)


def _parent_others_write(directory: Any, monkeypatch: Any) -> None:
    directory.parent.chmod(0o777)


def _parent_other_owner(directory: Any, monkeypatch: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    os.chown(directory.parent, ANOTHER_UID, -1)


UNSAFE = {
    "others-write": (_others_write, "writable by group or others (mode 0777)"),
    "group-write": (_group_write, "writable by group or others (mode 0770)"),
    "other-owner": (_other_owner, "is owned by uid"),
    "parent-others-write": (_parent_others_write, "writable by group or others (mode 0777, not"),
    "parent-other-owner": (_parent_other_owner, f"owned by uid {ANOTHER_UID}"),
}


@needs_flatbuffers
@pytest.mark.parametrize("unsafe", list(UNSAFE))
def test_directory_another_user_can_write_is_not_used(tmp_path, monkeypatch, caplog, unsafe):
    """Nothing is loaded from it, not even a file that verifies (whoever can write the directory
    can replace the key): one warning line, and the programs are traced."""
    make_unsafe, why = UNSAFE[unsafe]
    directory = tmp_path / "cache"
    cache = ProgramCache(directory)
    path = cache.path("fit.winner", cache.key("fit.winner", ARGS, {}))
    meta_line, _, payload = forged_body().partition(b"\n")
    cache._write(path, payload, json.loads(meta_line))
    planted = path.read_bytes()
    make_unsafe(directory, monkeypatch)
    build = Builds(JIT_SCALED)
    with caplog.at_level(logging.WARNING, logger=program_cache.__name__):
        for _ in range(2):
            cache = ProgramCache(directory)
            assert_allclose(cache.call("fit.winner", build, ARGS)["out"], GENUINE_OUT)
            assert not cache.persistent
    assert build.calls == 2
    (warning,) = cache_warnings(caplog)
    assert "\n" not in warning and str(directory) in warning and why in warning
    assert "not used, programs are traced" in warning
    assert path.read_bytes() == planted and files(directory) == [path.name]  # nothing written


@needs_flatbuffers
def test_sticky_parent_writable_by_others_is_accepted(tmp_path):
    """Like /tmp: others may write the parent, but not rename or replace our directory in it."""
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o1777)
    ProgramCache(parent / "cache").call("scaled", Builds(JIT_SCALED), ARGS)
    build = Builds(None)
    cache = ProgramCache(parent / "cache")
    assert cache.persistent
    assert_allclose(cache.call("scaled", build, ARGS)["out"], GENUINE_OUT)


def test_created_directories_and_key_are_private(tmp_path):
    directory = tmp_path / "a" / "b"
    cache = ProgramCache(directory)
    assert cache.persistent
    for created in (tmp_path / "a", directory):
        assert stat.S_IMODE(created.stat().st_mode) == 0o700
    key = directory / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert ProgramCache(directory)._mac_key == key.read_bytes()  # kept, not made again
    assert sorted(p.name for p in directory.iterdir()) == [KEY_FILE]


def test_processes_starting_together_share_one_key(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: install_key(tmp_path), range(16)))
    assert len(keys) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]  # no temporary file left


def _key_mode_0644(key: Any, monkeypatch: Any) -> None:
    key.chmod(0o644)


def _key_other_owner(key: Any, monkeypatch: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    os.chown(key, ANOTHER_UID, -1)


def _key_short(key: Any, monkeypatch: Any) -> None:
    key.write_bytes(b"0" * 16)


def _key_symlink(key: Any, monkeypatch: Any) -> None:
    target = key.parent.parent / "elsewhere"
    target.write_bytes(key.read_bytes())
    target.chmod(0o600)
    key.unlink()
    key.symlink_to(target)


BAD_KEYS = {
    "mode-0644": (_key_mode_0644, "of mode 0644, not 0600"),
    "other-owner": (_key_other_owner, f"owned by uid {ANOTHER_UID}"),
    "short": (_key_short, "of 16 bytes, not 32"),
    "symlink": (_key_symlink, "cannot be used"),
}


@needs_flatbuffers
@pytest.mark.parametrize("bad", list(BAD_KEYS))
def test_untrusted_key_file_is_refused(tmp_path, monkeypatch, caplog, bad):
    damage, why = BAD_KEYS[bad]
    directory = tmp_path / "cache"
    ProgramCache(directory).call("scaled", Builds(JIT_SCALED), ARGS)
    damage(directory / KEY_FILE, monkeypatch)
    build = Builds(JIT_SCALED)
    with caplog.at_level(logging.WARNING, logger=program_cache.__name__):
        cache = ProgramCache(directory)
        assert_allclose(cache.call("scaled", build, ARGS)["out"], GENUINE_OUT)
    assert build.calls == 1 and not cache.persistent
    (warning,) = cache_warnings(caplog)
    assert str(directory) in warning and why in warning


class Empty(NamedTuple):
    pass


class Pair(NamedTuple):
    first: Any
    second: Any


def test_register_namedtuples_is_idempotent():
    register_namedtuples(Pair, Empty)
    register_namedtuples(Pair, Empty, optax.EmptyState)

    # Registered by someone else, under another name: no error either.
    class Other(NamedTuple):
        x: Any

    jax_export.register_namedtuple_serialization(Other, serialized_name="elsewhere.Other")
    register_namedtuples(Other)


@needs_flatbuffers
def test_namedtuples_none_and_empty_states(tmp_path):
    """NamedTuples (output-only ones, empty ones) and None survive the round trip."""
    fn = jax.jit(lambda p: (Pair(p.first * 2, None), Empty(), [p.second, {"k": None}]))
    args = (Pair(jnp.ones(2), (jnp.zeros(()), optax.EmptyState())),)
    out1 = ProgramCache(tmp_path).call("pairs", Builds(fn), args)
    build = Builds(fn)
    out2 = ProgramCache(tmp_path).call("pairs", build, args)
    assert build.calls == 0
    assert isinstance(out2[0], Pair) and isinstance(out2[1], Empty)
    assert isinstance(out2[2][0][1], optax.EmptyState) and out2[0].second is None
    assert_trees_close(out2, fn(*args))
    assert_trees_close(out1, out2)


# A realistic program: the GMM tutorial's model fitted by SVI (TraceEnum_ELBO, AutoDelta) with
# an optax optimiser whose state holds optax NamedTuples, an empty one, a project NamedTuple
# (Priors) and a NamedTuple of our own with a string-keyed dict (like fit.py's _StepState).

K = 2
DATA = jnp.array([0.0, 1.0, 10.0, 11.0, 12.0, 0.5])


@config_enumerate
def gmm(data: Any, priors: Priors) -> None:
    weights = numpyro.sample("weights", dist.Dirichlet(priors.concentration * jnp.ones(K)))
    scale = numpyro.sample("scale", dist.LogNormal(priors.scale_log_mean[0], priors.scale_log_sd))
    with numpyro.plate("components", K):
        locs = numpyro.sample("locs", dist.Normal(priors.loc_center[0], priors.loc_scale[0]))
    with numpyro.plate("data", data.shape[0]):
        assignment = numpyro.sample("assignment", dist.Categorical(weights))
        numpyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


class CountState(NamedTuple):
    count: Any
    norms: dict[str, Any]


def counting() -> optax.GradientTransformation:
    def init(params: Any) -> CountState:
        return CountState(jnp.zeros((), jnp.int32), {k: jnp.zeros(()) for k in params})

    def update(grads: Any, state: CountState, params: Any = None) -> Any:
        norms = {k: jnp.linalg.norm(g) for k, g in grads.items()}
        return grads, CountState(state.count + 1, norms)

    return optax.GradientTransformation(init, update)


@functools.cache
def svi() -> SVI:
    guide = AutoDelta(
        handlers.block(handlers.seed(gmm, jax.random.PRNGKey(0)), hide=["assignment"])
    )
    result = SVI(gmm, guide, optax.chain(counting(), optax.adam(0.1)), loss=TraceEnum_ELBO())
    # The guide's set-up traced abstractly, as in mixture.fit_programs._setup_prototype: run
    # eagerly it compiles hundreds of small operations (seconds); traced, it would leak tracers.
    jax.eval_shape(lambda: result.init(jax.random.PRNGKey(0), DATA, seed_priors(1)))
    guide._init_locs = {
        "weights": jnp.full(K, 1 / K),
        "scale": jnp.ones(()),
        "locs": jnp.array([0.0, 10.0]),
    }
    for site in guide.prototype_trace.values():
        if "value" in site and hasattr(site["value"], "aval"):
            site["value"] = jnp.zeros(np.shape(site["value"]), site["value"].dtype)
    return result


def run_program(batched: bool) -> Any:
    """svi.update over a lax.scan of `length` steps (vmapped over a batch of states)."""
    update = svi().update

    @functools.partial(jax.jit, static_argnames="length")
    def run(state: Any, data: Any, priors: Priors, length: int) -> Any:
        def step(s: Any, _: Any) -> Any:
            s, loss = update(s, data, priors)
            return s, (loss, s.optim_state[1][1][0].norms)

        chunk = functools.partial(jax.lax.scan, step, length=length, xs=None)
        return jax.vmap(chunk)(state) if batched else chunk(state)

    return run


@needs_flatbuffers
def test_svi_programs_round_trip(tmp_path):
    """The SVI step over a scan, on one state and vmapped over a batch of states: a new
    instance (a new process) runs them without building, with the direct call's results."""
    priors = seed_priors(1)
    init = jax.jit(jax.vmap(functools.partial(svi().init, data=DATA, priors=priors)))
    states = init(jax.random.split(jax.random.PRNGKey(1), 3))
    state = jax.tree.map(lambda x: x[0], states)
    static = {"length": 4}
    run_batch = run_program(batched=True)
    direct = run_batch(states, DATA, priors, **static)
    # The unbatched program's direct results: the batch's first (one compilation fewer).
    direct_one = jax.tree.map(lambda x: x[0], direct)

    timings = {}
    builds = {True: Builds(run_program(True)), False: Builds(run_program(False))}
    for label in ("first", "loaded"):
        cache = ProgramCache(tmp_path)
        start = time.perf_counter()
        one = cache.call("run", builds[False], (state, DATA, priors), static)
        batch = cache.call("run_batch", builds[True], (states, DATA, priors), static)
        jax.block_until_ready((one, batch))
        timings[label] = time.perf_counter() - start
        assert [b.calls for b in builds.values()] == [1, 1]  # built by the first instance only
        assert type(one[0]) is type(state) and type(batch[0]) is type(states)
        assert_trees_close(batch, direct)
        assert_trees_close(one, direct_one, rtol=1e-5)
        assert [jax.typeof(x) for x in jax.tree.leaves(batch)] == [
            jax.typeof(x) for x in jax.tree.leaves(direct)
        ]  # weak types included
        assert batch[1][0].shape == (3, 4) and one[1][0].shape == (4,)

    # The returned states feed the next call: same key (no new file, no build, no compilation).
    key = cache.key("run_batch", (states, DATA, priors), static)
    again = cache.call("run_batch", builds[True], (batch[0], DATA, priors), static)
    assert_trees_close(again, run_batch(direct[0], DATA, priors, **static))
    assert cache._programs[key].args[0]._cache_size() == 1
    assert len(files(tmp_path)) == 2

    start = time.perf_counter()
    exported = jax_export.export(run_program(True))(states, DATA, priors, **static)
    payload = exported.serialize()
    trace = time.perf_counter() - start
    start = time.perf_counter()
    jax_export.deserialize(payload)
    load = time.perf_counter() - start
    print(
        f"\nSVI programs, first call of both (build, trace, export, compile, run):"
        f" {timings['first']:.2f}s; in a new instance (load, compile, run):"
        f" {timings['loaded']:.2f}s. Batched program alone: trace+export {trace:.3f}s,"
        f" deserialise {load:.4f}s ({len(payload)} bytes)"
    )


@needs_flatbuffers
def test_processes_share_programs(tmp_path):
    """Two processes write the same key at once; a third loads it without building, outputs of
    NamedTuple types it never passed in included (the file names them)."""
    script = (
        "import sys, jax, jax.numpy as jnp\n"
        "from mixture.program_cache import ProgramCache\n"
        "from tests.unit.mixture.test_program_cache import Empty, Pair\n"
        "def build():\n"
        "    if sys.argv[2] == 'load': raise SystemExit('build called')\n"
        "    return jax.jit(lambda x: (Pair(x * 2, None), Empty(), 2 * x.sum()))\n"
        "for n in range(3):\n"
        "    out = ProgramCache(sys.argv[1]).call('pairs', build, (jnp.ones(2) + n,))\n"
        "    assert type(out[0]) is Pair and type(out[1]) is Empty, out\n"
        "    assert float(out[2]) == 4 * (1 + n), out\n"
    )

    def run(mode: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", script, str(tmp_path), mode], cwd=ROOT)

    writers = [run("build"), run("build")]
    assert [p.wait(timeout=120) for p in writers] == [0, 0]
    assert len(files(tmp_path)) == 1
    assert run("load").wait(timeout=120) == 0


@needs_flatbuffers
def test_weak_types_survive(tmp_path):
    fn = jax.jit(lambda x, y: (x * 2, y + 1, jnp.int32(3)))
    args = (1.5, jnp.ones(2))
    ProgramCache(tmp_path).call("weak", Builds(fn), args)
    out = ProgramCache(tmp_path).call("weak", Builds(None), args)
    assert [jax.typeof(o) for o in out] == [jax.typeof(o) for o in fn(*args)]
    assert jax.typeof(out[0]).weak_type


def test_key_follows_jax_settings_that_change_a_trace(tmp_path):
    cache = ProgramCache(tmp_path, salt="s")
    before = cache.key("f", ARGS, {})
    with jax.default_matmul_precision("highest"):
        assert cache.key("f", ARGS, {}) != before
    assert cache.key("f", ARGS, {}) == before


@needs_flatbuffers
def test_prune_keeps_other_code_in_use_and_removes_what_is_idle(tmp_path):
    """Two versions of the code sharing a directory keep each other's programs while both load
    them; files of another salt idle for a day go, as do a dead writer's temporary files."""
    build = Builds(JIT_SCALED)
    old, new = ProgramCache(tmp_path, salt="v1"), ProgramCache(tmp_path, salt="v2")
    old.call("scaled", build, ARGS)
    new.call("scaled", build, ARGS)
    assert new.prune() == 0  # v1's file was just written
    (v1_file,) = (tmp_path / name for name in files(tmp_path) if name.startswith("v1-"))
    day_ago = v1_file.stat().st_mtime - 2 * 86400
    os.utime(v1_file, (day_ago, day_ago))
    ProgramCache(tmp_path, salt="v1").call("scaled", build, ARGS)  # loaded: in use again
    assert build.calls == 2
    assert new.prune() == 0
    os.utime(v1_file, (day_ago, day_ago))
    tmp = tmp_path / ".dead-writer.tmp"
    tmp.write_bytes(b"partial")
    os.utime(tmp, (day_ago, day_ago))
    assert new.prune() == 2
    assert [name[:3] for name in files(tmp_path)] == ["v2-"]
    assert not tmp.exists()
