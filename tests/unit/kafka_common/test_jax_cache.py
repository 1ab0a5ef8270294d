"""GMM_JAX_CACHE_DIR: JAX's persistent compilation cache, on by default, off on request, and never
fatal when its directory cannot be used."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap

import jax
import pytest

from kafka_common import jax_cache
from kafka_common.jax_cache import (
    AUTO,
    ENV,
    cache_dir_from_env,
    default_cache_dir,
    enable_compilation_cache,
    resolve_cache_dir,
)
from stream_app.settings import WorkerSettings
from tests.conftest import ROOT
from trainer.settings import TrainerSettings

_CONFIG = (
    "jax_enable_compilation_cache",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture(autouse=True)
def _restore_jax_config():
    """The tests below change process-wide JAX flags: put them back for the rest of the run."""
    saved = {name: getattr(jax.config, name) for name in _CONFIG}
    warned = set(jax_cache._warned)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    jax_cache._warned.clear()
    jax_cache._warned.update(warned)


def test_default_directory_follows_xdg_cache_home(tmp_path):
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(
        tmp_path / "gmm-stream" / "jax"
    )


def test_default_directory_without_xdg_is_under_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = str(tmp_path / ".cache" / "gmm-stream" / "jax")
    assert default_cache_dir({}) == expected
    assert default_cache_dir({"XDG_CACHE_HOME": ""}) == expected


def test_auto_prefers_jax_own_variable_and_an_explicit_path_wins(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert resolve_cache_dir(AUTO, env) == str(tmp_path / "xdg" / "gmm-stream" / "jax")
    assert resolve_cache_dir(None, env) == resolve_cache_dir(AUTO, env)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jaxs")
    assert resolve_cache_dir("auto", env) == str(tmp_path / "jaxs")
    assert resolve_cache_dir(str(tmp_path / "mine"), env) == str(tmp_path / "mine")


@pytest.mark.parametrize("value", ["off", "OFF", " off ", "", "  "])
def test_off_or_empty_disables_the_cache(value, tmp_path):
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jaxs")}
    assert resolve_cache_dir(value, env) is None
    assert enable_compilation_cache(value, env) is None
    assert jax.config.jax_enable_compilation_cache is False
    assert not (tmp_path / "jaxs").exists()


def test_the_setting_is_read_from_gmm_jax_cache_dir():
    assert cache_dir_from_env({}) == AUTO
    assert cache_dir_from_env({ENV: "/somewhere"}) == "/somewhere"


@pytest.mark.parametrize("cls", [WorkerSettings, TrainerSettings])
def test_worker_and_trainer_settings_carry_the_same_setting(cls):
    field = {f.name: f for f in dataclasses.fields(cls)}["jax_cache_dir"]
    assert field.metadata["env"] == ENV
    assert field.default == AUTO
    assert cls.from_env({ENV: "off"}).jax_cache_dir == "off"


def test_enable_creates_a_private_directory_and_caches_every_program(tmp_path):
    target = tmp_path / "a" / "cache"
    assert enable_compilation_cache(str(target), {}) == str(target)
    assert target.is_dir()
    for created in (target.parent, target):  # missing parents too: a parent must be private
        assert stat.S_IMODE(created.stat().st_mode) == 0o700
    assert list(target.iterdir()) == []  # the write probe is gone
    assert jax.config.jax_enable_compilation_cache is True
    assert jax.config.jax_compilation_cache_dir == str(target)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0


def test_jax_threshold_variables_set_by_the_operator_are_kept(tmp_path):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.5)
    env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2.5"}
    enable_compilation_cache(str(tmp_path), env)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5


def _assert_one_warning_and_no_cache(caplog, result, where):
    assert result is None
    assert jax.config.jax_enable_compilation_cache is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message and where in message and ENV in message


def test_a_directory_that_cannot_be_created_is_one_warning_not_a_failure(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    where = str(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="kafka_common.jax_cache"):
        result = enable_compilation_cache(where, {})
        _assert_one_warning_and_no_cache(caplog, result, where)
        # Asked again (the trainer CLI, then its job): still no cache, and no second line.
        assert enable_compilation_cache(where, {}) is None
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod"
)
def test_an_unwritable_directory_is_one_warning_not_a_failure(tmp_path, caplog):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="kafka_common.jax_cache"):
            result = enable_compilation_cache(str(locked), {})
            _assert_one_warning_and_no_cache(caplog, result, str(locked))
    finally:
        locked.chmod(0o700)


_PROGRAM = textwrap.dedent(
    """
    import json

    import jax
    import jax.numpy as jnp

    from kafka_common.jax_cache import cache_dir_from_env, enable_compilation_cache

    used = enable_compilation_cache(cache_dir_from_env())
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event)
        if event == "/jax/compilation_cache/cache_hits" else None
    )
    value = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0)(jnp.arange(4.0))
    print(json.dumps({"dir": used, "hits": len(hits), "sum": float(value.sum())}))
    """
)


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env[ENV] = str(cache)

    def run() -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", _PROGRAM],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run()
    assert first["dir"] == str(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first process wrote nothing to the cache"
    second = run()
    assert second["hits"] >= 1, "the second process compiled everything again"
    assert second["sum"] == first["sum"]


_COMPILE = textwrap.dedent(
    """
    import sys

    import jax
    import jax.numpy as jnp

    from kafka_common.jax_cache import enable_compilation_cache

    if sys.argv[1] == "ours":
        enable_compilation_cache(sys.argv[2])
    jax.jit(lambda x: jnp.tanh(x) * float(sys.argv[3]))(jnp.arange(4.0)).block_until_ready()
    """
)


def test_entries_an_unbounded_jax_process_wrote_do_not_stop_later_writes(tmp_path):
    """A plain JAX process pointed at the directory (JAX_COMPILATION_CACHE_DIR; unbounded, JAX's
    default) writes entries without access times; ours (bounded) still caches what it compiles."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}

    def compile_in_a_process(who: str, constant: str, **extra: str) -> None:
        subprocess.run(
            [sys.executable, "-c", _COMPILE, who, str(cache), constant],
            cwd=ROOT,
            env={**env, **extra, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"},
            check=True,
            capture_output=True,
            timeout=120,
        )

    def entries(suffix: str) -> set[str]:
        return {p.name.removesuffix(suffix) for p in cache.glob(f"*{suffix}")}

    compile_in_a_process("jax", "2.0", JAX_COMPILATION_CACHE_DIR=str(cache))
    unbounded = entries("-cache")
    assert unbounded and not entries("-atime")  # the premise: JAX's unbounded entries
    compile_in_a_process("ours", "3.0")
    assert len(entries("-cache")) > len(unbounded), "our process's program was not cached"
    assert entries("-atime") == entries("-cache")


def test_repair_gives_each_entry_without_an_access_time_the_oldest(tmp_path):
    (tmp_path / "a-cache").write_bytes(b"x")
    (tmp_path / "b-cache").write_bytes(b"y")
    (tmp_path / "b-atime").write_bytes((7).to_bytes(8, "little"))
    assert jax_cache.repair_access_times(str(tmp_path)) == 1
    assert (tmp_path / "a-atime").read_bytes() == (0).to_bytes(8, "little")
    assert (tmp_path / "b-atime").read_bytes() == (7).to_bytes(8, "little")
    assert jax_cache.repair_access_times(str(tmp_path)) == 0
    assert jax_cache.repair_access_times(str(tmp_path / "missing")) == 0


def test_fit_caches_keep_traced_programs_beside_the_compiled_ones(tmp_path):
    from mixture import fit

    try:
        assert jax_cache.enable_fit_caches(str(tmp_path), {}) == str(tmp_path)
        assert fit.default_programs().cache is not None
        assert fit.default_programs().cache.directory == tmp_path / "programs"
        assert jax_cache.enable_fit_caches("off", {}) is None
        assert fit.default_programs().cache is None
    finally:
        fit.use_program_cache(None)


# JAX reads its cache's entries itself (native code, which we cannot authenticate): the only
# protection is that a directory another user can write is not used.

ANOTHER_UID = 12345


def _others_write(directory, monkeypatch):
    directory.chmod(0o777)


def _group_write(directory, monkeypatch):
    directory.chmod(0o775)


def _other_owner(directory, monkeypatch):
    if os.geteuid() == 0:
        os.chown(directory, ANOTHER_UID, -1)
    else:  # this process plays another user
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + ANOTHER_UID)


def _parent_others_write(directory, monkeypatch):
    directory.parent.chmod(0o777)


UNSAFE = {
    "others-write": (_others_write, "writable by group or others (mode 0777)"),
    "group-write": (_group_write, "writable by group or others (mode 0775)"),
    "other-owner": (_other_owner, "is owned by uid"),
    "parent-others-write": (_parent_others_write, "has a parent"),
}


@pytest.mark.parametrize("unsafe", list(UNSAFE))
def test_a_directory_another_user_can_write_is_one_warning_and_no_cache(
    tmp_path, monkeypatch, caplog, unsafe
):
    make_unsafe, why = UNSAFE[unsafe]
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    make_unsafe(directory, monkeypatch)
    jax.config.update("jax_enable_compilation_cache", True)  # on before: turned off
    with caplog.at_level(logging.WARNING, logger="kafka_common.jax_cache"):
        result = enable_compilation_cache(str(directory), {})
        _assert_one_warning_and_no_cache(caplog, result, str(directory))
    assert why in caplog.records[0].getMessage()
    assert list(directory.iterdir()) == []  # not even a write probe


def test_fit_caches_are_both_off_in_a_directory_others_can_write(tmp_path):
    from mixture import fit

    tmp_path.chmod(0o777)
    try:
        assert jax_cache.enable_fit_caches(str(tmp_path), {}) is None
        assert jax.config.jax_enable_compilation_cache is False
        assert fit.default_programs().cache is None
        assert not (tmp_path / "programs").exists()
    finally:
        fit.use_program_cache(None)
        tmp_path.chmod(0o700)


def test_a_sticky_parent_others_can_write_is_accepted(tmp_path):
    """Like /tmp: others cannot rename or replace the directory we own in it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert enable_compilation_cache(str(shared / "cache"), {}) == str(shared / "cache")
    assert jax.config.jax_enable_compilation_cache is True
