"""Shared test configuration: markers follow the folder a test lives in."""

from __future__ import annotations

import ast
import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import hypothesis  # noqa: F401
import pytest

# Imported here, at start-up, so that pytest's assertion rewriting parses hypothesis before any
# test has started threads: otherwise the hypothesis plugin imports it at the terminal summary,
# where CPython 3.11's ast.parse can fail spuriously ("AST constructor recursion depth
# mismatch", python/cpython#106905) after a run that passed.

# The suite's time is mostly XLA compiling programs that then run once on a few hundred points:
# LLVM's optimisations of that code cost ~30 % of each compilation and save nothing here. Set
# before JAX starts, for the test processes and every process they start (CLIs, workers,
# trainers); the benchmarks, which time the code, compile as users do. Results agree to rounding.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_source(source: str, filename: str = "<unknown>") -> ast.AST:
    """ast.parse, once more on CPython 3.11's spurious "AST constructor recursion depth
    mismatch" (python/cpython#106905: the converter's depth counter is shared by the
    interpreter's threads, and a thread an earlier test left running can upset it; a second
    parse is unaffected)."""
    try:
        return ast.parse(source, filename)
    except SystemError:
        return ast.parse(source, filename)


KAFKA_SCRIPT = ROOT / "deploy" / "kafka" / "kafka.sh"

#: A directory shared by the run's processes (pytest-xdist's workers inherit the variable from
#: the main process, which makes the directory and removes it at the end).
SHARED_DIR_ENV = "GMM_TESTS_SHARED_DIR"
#: Set (to anything): tests compile without the run's shared JAX compilation cache.
NO_SHARED_CACHE_ENV = "GMM_TESTS_NO_SHARED_JAX_CACHE"
#: A JAX compilation cache kept from run to run (`make test` sets one under ~/.cache/gmm-ci);
#: unset, each run has a new one. Entries are keyed by the program, its compile options and
#: JAX's version: a stale entry is never loaded, only left unused.
PERSISTENT_CACHE_ENV = "GMM_TESTS_JAX_CACHE_DIR"
#: In the shared directory: the port of a broker the run started (kafka_bootstrap), to stop.
STARTED_BROKER = "kafka-started-by-tests"


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def shared_tmp() -> pathlib.Path:
    """The directory shared by every process of this test run (locks, markers)."""
    return pathlib.Path(os.environ[SHARED_DIR_ENV])


def imported_by(statement: str, modules: set[str]) -> list[str]:
    """Which of `modules` a new interpreter has imported after running `statement` (what a
    process's start-up pays for), sorted."""
    code = f"import sys; {statement}; print(' '.join(sorted({modules!r} & set(sys.modules))))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def window_readers_of(parent: int | None = None) -> list[int]:
    """The pids of the window readers (`trainer.window_readers`) still running that `parent`
    (this process by default) started; one reaped or a zombie is gone."""
    parent_pid = os.getpid() if parent is None else parent
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            mine = state != "Z" and int(ppid) == parent_pid
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if mine and b"trainer.window_readers" in command:
            found.append(int(proc.name))
    return found


def jax_subprocess_env() -> dict[str, str]:
    """The environment for a test's own Python subprocess that compiles JAX programs: the run's
    compilation cache (the one `_shared_compilation_cache` gives this process; JAX reads these
    variables itself), every program cached. Such a subprocess otherwise compiles everything
    anew in every run: a minute of CPU for a multi-device fit."""
    from kafka_common.jax_cache import MAX_CACHE_BYTES

    env = dict(os.environ)
    if not os.environ.get(NO_SHARED_CACHE_ENV) and SHARED_DIR_ENV in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ.get(PERSISTENT_CACHE_ENV) or str(
            shared_tmp() / "jax-cache"
        )
        # Bounded as the test processes' cache is: an unbounded process (JAX's default) writes
        # entries without the access times the bounded ones' eviction reads.
        env.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(MAX_CACHE_BYTES))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    return env


def pytest_configure(config: pytest.Config) -> None:
    if not _is_xdist_worker(config):
        os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="gmm-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The main process, after every worker: stops a broker the run started, if any."""
    if _is_xdist_worker(config) or SHARED_DIR_ENV not in os.environ:
        return
    shared = pathlib.Path(os.environ.pop(SHARED_DIR_ENV))
    marker = shared / STARTED_BROKER
    if marker.exists():
        env = {**os.environ, "KAFKA_PORT": marker.read_text().strip()}
        subprocess.run(["bash", str(KAFKA_SCRIPT), "down"], check=False, env=env)
    shutil.rmtree(shared, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = pathlib.Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)
    if _is_xdist_worker(config):
        # The slow tests first (a stable sort: the same order in every worker, as xdist
        # requires), so that none of them starts last and keeps the others waiting.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# pytest-xdist: `--dist loadscope` (the Makefile's) runs a test file whose tests share a fixture
# of module, class or package scope (a broker of their own, a fitted model) in one process, so
# that the fixture is set up once; every other test is scheduled on its own, wherever a process
# is free. (xdist's own `--dist loadgroup` cannot do it with this pytest: it renames the tests
# through an attribute pytest 9 no longer reads.)
_SHARED_FIXTURE = re.compile(r"""@pytest\.fixture\(\s*scope=["'](?:module|class|package)["']""")


@functools.cache
def _shares_fixtures(path: str) -> bool:
    try:
        return bool(_SHARED_FIXTURE.search((ROOT / path).read_text()))
    except OSError:
        return False


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if _shares_fixtures(path) else nodeid

    return SharedFixtureScheduling(config, log)


@functools.cache
def _run_program_cache(directory: str) -> Any:
    """This test process's cache of the run's traced fit programs (`programs/` under the JAX
    cache, where `kafka_common.jax_cache.enable_fit_caches` keeps the service's); None when the
    directory is unusable. One object per process: programs loaded stay loaded from test to
    test."""
    from mixture import fit

    fit.use_program_cache(os.path.join(directory, "programs"))
    return fit.default_programs().cache


@pytest.fixture(autouse=True)
def _shared_compilation_cache():
    """Every test process compiles through one JAX compilation cache, new for the run (in the
    shared directory) or kept from run to run (PERSISTENT_CACHE_ENV): a program another test
    (or another process, or an earlier run) compiled is loaded, not compiled again. Its
    `programs/` holds the fits' traced programs (`mixture.program_cache`, as the trainer keeps
    them): NumPyro's tracing, most of a small fit's CPU, then runs once per program, not once
    per test process and run. Both are set before each test, and the program cache again after
    it: a test or an in-process CLI may change either (a test's own program cache, or none,
    does not leak into the next test)."""
    if os.environ.get(NO_SHARED_CACHE_ENV) or SHARED_DIR_ENV not in os.environ:
        yield
        fit = sys.modules.get("mixture.fit")
        if fit is not None and fit.default_programs().cache is not None:
            fit.use_program_cache(None)  # an in-process CLI's: each test traces its own
        return
    from kafka_common.jax_cache import enable_compilation_cache
    from mixture.fit import default_programs

    directory = os.environ.get(PERSISTENT_CACHE_ENV) or str(shared_tmp() / "jax-cache")
    enable_compilation_cache(directory)
    default_programs().cache = _run_program_cache(directory)
    yield
    default_programs().cache = _run_program_cache(directory)
