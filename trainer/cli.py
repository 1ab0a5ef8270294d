"""`gmm-trainer`: offline fits from files (`fit`, optionally `--publish`ed), the trainer job
(`run`, or `run --once` for one cycle), publishing a params file made anywhere (`publish`), and
the lifecycle of a model name (`models` lists its versions, `rollback --to V` serves an earlier
one again). Settings for Kafka come from the
environment."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from kafka_common.jax_cache import cache_dir_from_env, enable_fit_caches
from kafka_common.settings import SettingsError
from mixture.covariance import DEFAULT_REG_COVAR, check_covariance
from mixture.fit import INITS, DataError, FitConfig, to_model_params, use_fit_processes
from mixture.fit_hosts import agree, gathered, join_processes, same_everywhere
from mixture.labels import order_by_location
from mixture.params import ModelParams
from mixture.robust import fit_robust
from mixture.select import DEFAULT_MAX_COMPONENTS, parse_components
from trainer.datafile import load_points
from trainer.settings import TrainerSettings

PROG = "gmm-trainer"


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _progress_printer() -> object | None:
    if not sys.stderr.isatty():
        return None

    def show(step: int, loss: float) -> None:
        print(f"\r  step {step:6d}  loss {loss:.6g}", end="", file=sys.stderr, flush=True)

    return show


def cmd_fit(args: argparse.Namespace) -> int:
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        k = parse_components(args.components)
    except ValueError as exc:
        return _fail(f"--components {exc}")
    auto = k is None
    if args.max_components < 1:
        return _fail(f"--max-components must be >= 1, got {args.max_components}")
    if not 0 <= args.reg_covar < 1:
        return _fail(f"--reg-covar must be in [0, 1), got {args.reg_covar}")
    if args.restarts < 1:
        return _fail(f"--restarts must be >= 1, got {args.restarts}")
    if args.version < 0:
        return _fail(f"--version must be >= 0, got {args.version}")
    if not 0 <= args.seed < 2**63:
        return _fail(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.processes < 1:
        return _fail(f"--processes must be >= 1, got {args.processes}")
    across = args.processes > 1
    if across:
        if not 0 <= args.process_id < args.processes:
            return _fail(f"--process-id must be in [0, {args.processes}), got {args.process_id}")
        if not args.coordinator:
            return _fail("--processes > 1 needs --coordinator HOST:PORT (process 0's address)")
        if auto:
            return _fail("--components auto runs in one process: give K with --processes")
        if args.publish and args.process_id != 0:
            return _fail("--publish is process 0's: the others fit with it")
    covariance = args.covariance
    if args.per_component_scale:
        if covariance not in ("tied-diag", "diag"):
            return _fail("--per-component-scale is the older name of --covariance diag")
        covariance = "diag"
    bics: dict[int, float] = {}
    n_points = 0
    try:
        if across:
            points = _part_across_processes(args, columns)
            n_points = int(gathered(np.array([len(points)])).sum())
        else:
            points = load_points(args.data, columns)
            n_points = len(points)
        config = FitConfig(
            n_components=k or 1,
            covariance=covariance,
            reg_covar=args.reg_covar,
            priors=args.priors,
            init=args.init,
            n_init=args.restarts,
        )
        progress = _progress_printer()
        key = jax.random.PRNGKey(args.seed)
        fitted = fit_robust(
            points,
            key,
            config,
            max_components=args.max_components if auto else None,
            progress=progress,  # type: ignore[arg-type]
        )
        result, bics = fitted.result, fitted.bics or {}
        if progress is not None:
            print(file=sys.stderr)
    except DataError as exc:
        return _fail(str(exc))
    except np.linalg.LinAlgError as exc:  # a degenerate fit (e.g. --reg-covar 0 on repeated values)
        return _fail(f"the fit is degenerate ({exc}); try a larger --reg-covar")
    # A first fit's labels follow location, as the trainer's do.
    result = result._replace(params=order_by_location(result.params))
    fitted_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    extra: dict[str, Any] = {"excluded_points": fitted.excluded}
    if bics:
        extra["bic_by_components"] = {str(k): v for k, v in bics.items()}
    model = to_model_params(result, args.version, n_points, fitted_at, **extra)
    if across and args.process_id != 0:  # process 0 writes (and publishes) the one model
        print(
            f"process {args.process_id} of {args.processes}: {len(points)} of {n_points} "
            f"points; process 0 writes the model",
            file=sys.stderr,
        )
        return 0
    if args.publish:
        from kafka_common.params_topic import OpenTransaction, PublishConflict

        try:
            model = asyncio.run(_publish(model))
        except (SettingsError, OpenTransaction, PublishConflict) as exc:
            return _fail(str(exc))
        except _kafka_errors() as exc:
            from kafka_common.connection import describe_kafka_error

            settings = TrainerSettings.from_env()
            return _fail(describe_kafka_error(exc, settings.kafka.bootstrap_servers))
    text = model.dumps()
    if args.out == "-":
        print(text)
    else:
        pathlib.Path(args.out).write_text(text + "\n")
    p = result.params
    out = sys.stderr if args.out == "-" else sys.stdout
    for k, bic in bics.items():
        chosen = "  <- lowest" if k == p.n_components else ""
        print(f"K={k}: BIC {bic:.2f}{chosen}", file=out)
    print(
        f"fit: K={p.n_components} D={p.dim} covariance {model.covariance} n={n_points} "
        f"loss {result.final_loss:.4f} (best init {result.init_loss:.4f}) "
        f"steps {result.n_steps}{'' if result.converged else ' (step cap)'} "
        f"in {result.seconds:.2f}s -> {'stdout' if args.out == '-' else args.out}",
        file=out,
    )
    print(component_table(model), file=out, end="")
    print(_excluded_line(fitted.excluded, n_points), file=out)
    return 0


def _part_across_processes(args: argparse.Namespace, columns: list[str] | None) -> np.ndarray:
    """Joins the other processes (`--coordinator`) and loads this one's part (`--data`); a
    part that cannot be loaded fails every process (none waits for it in a collective)."""
    try:
        join_processes(args.coordinator, args.processes, args.process_id)
    except Exception as exc:  # jax.distributed's errors have no common type
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot join the processes at {args.coordinator}: {reason}") from None
    use_fit_processes()
    points, error = np.zeros((0, 1)), None
    try:
        points = load_points(args.data, columns)
    except DataError as exc:
        error = exc
    except Exception as exc:  # any failure fails every process, none left waiting
        error = DataError(f"cannot read {args.data}: {type(exc).__name__}: {exc}")
    agree(error)
    same_everywhere("fit options or data columns (give every process the same)", _digest(args))
    return points


def _digest(args: argparse.Namespace) -> bytes:
    """What must be the same in every process: the fit's options, and the CSV header's
    columns (parts with the same columns in another order would be mixed up)."""
    options = {
        name: getattr(args, name)
        for name in (
            "components", "covariance", "reg_covar", "priors", "per_component_scale",
            "restarts", "init", "seed", "version", "columns", "processes",
        )
    }  # fmt: skip
    options["header"] = _csv_header(args.data)
    return json.dumps(options, sort_keys=True).encode()


def _csv_header(path: str) -> str | None:
    """A CSV file's header line (None for JSON lines, which have no columns)."""
    with open(path, encoding="utf-8-sig") as lines:
        for line in lines:
            if line.strip():
                return None if line.lstrip()[:1] in ("{", "[") else line.strip()
    return None


def _excluded_line(excluded: dict[str, int], n: int) -> str:
    """The summary's line on the points the fit left out (mixture.robust's rules)."""
    left_out = sum(excluded.values())
    if not left_out:
        return f"left out: none of the {n} points"
    reasons = ", ".join(f"{count} {reason}" for reason, count in excluded.items() if count)
    return f"left out: {left_out} of the {n} points ({reasons}); gmm-classify still serves them"


#: Coordinates shown per component in the summary; the parameters file has them all.
SHOWN_COORDINATES = 4


def component_table(model: Any) -> str:
    """One line per component: weight, location and standard deviations (the square roots of
    the covariance's diagonal, whatever its form), at most SHOWN_COORDINATES of each, so a
    summary stays readable for any D."""
    p = model.mixture
    sd = _standard_deviations(p.scale, model.covariance, p.n_components, p.dim)
    rows = [
        ("k", "weight", "loc", "sd"),
        *(
            (str(k), f"{p.weights[k]:.4f}", _coordinates(p.locs[k]), _coordinates(sd[k]))
            for k in range(p.n_components)
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        "  "
        + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
        + f"  {row[3]}\n"
        for row in rows
    )


def _standard_deviations(scale: np.ndarray, covariance: str, k: int, d: int) -> np.ndarray:
    """(K, D) standard deviations of each component along each coordinate."""
    scale = np.asarray(scale, dtype=np.float64)
    if covariance in ("tied", "full"):  # lower Cholesky factors: sd = row norms
        return np.broadcast_to(np.sqrt(np.sum(scale**2, axis=-1)), (k, d))
    if covariance == "spherical" and scale.shape == (k,):
        return np.broadcast_to(scale.reshape(k, 1), (k, d))
    return np.broadcast_to(scale, (k, d))  # a number, D numbers or K x D


def _coordinates(values: np.ndarray) -> str:
    """Fixed decimals, not scientific: locations at an offset (epoch seconds, 1.7e9) must still
    show how far apart they are."""
    shown = ", ".join(_decimals(v) for v in values[:SHOWN_COORDINATES])
    more = len(values) - SHOWN_COORDINATES
    return shown if more <= 0 else f"{shown}, ... (+{more})"


def _decimals(value: np.floating[Any]) -> str:
    return f"{value:.4f}" if abs(value) < 1e15 else f"{value:.6e}"


def _kafka_errors() -> tuple[type[Exception], ...]:
    """What a failed talk with Kafka raises. Kafka's modules load only when Kafka is used: an
    offline fit starts faster without them."""
    from aiokafka.errors import KafkaError

    from kafka_common.connection import KafkaUnavailable
    from kafka_common.params_topic import OpenTransaction, PublishConflict

    return (
        KafkaUnavailable,
        TimeoutError,
        KafkaError,
        OSError,
        LookupError,
        PublishConflict,
        OpenTransaction,
    )


async def _publish(model: ModelParams) -> ModelParams:
    """Publishes as the next version of GMM_MODEL_NAME (compare-and-set)."""
    from kafka_common import params_topic
    from kafka_common.connection import check_connection
    from kafka_common.topics import ensure_topics

    settings = _settings()
    await check_connection(settings.kafka)
    specs = [
        params_topic.params_spec(settings.params_topic),
        params_topic.history_spec(settings.history_topic),
    ]
    await ensure_topics(settings.kafka, specs)
    publisher = params_topic.Publisher.from_settings(
        settings, timeout_s=params_topic.COMMAND_PUBLISH_SECONDS
    )
    # Bounded by the publisher itself, which alone can tell a publication that timed out
    # before its commit (nothing published) from one whose commit went unanswered.
    model = await publisher.publish(model, "cli")
    print(
        f"published {settings.model_name!r} version {model.version} to {settings.params_topic}",
        file=sys.stderr,
    )
    return model


def _settings(name: str | None = None) -> TrainerSettings:
    """The trainer's settings from the environment, the model name overridden by --name."""
    settings = TrainerSettings.from_env()
    if name is not None:
        from kafka_common.settings import check_model_name

        check_model_name(name)
        settings = dataclasses.replace(settings, model_name=name)
    return settings


def _with_kafka(
    args: argparse.Namespace,
    action: Callable[[TrainerSettings], Any],
    errors: tuple[type[Exception], ...] = (),
    timeout: float | None = 60,
) -> int:
    """Runs action(settings) against Kafka; a refusal or an outage (or one of `errors`) is a
    one-line error."""
    try:
        settings = _settings(args.name)
    except SettingsError as exc:
        return _fail(str(exc))
    from kafka_common.connection import check_connection, describe_kafka_error
    from kafka_common.params_topic import OpenTransaction, PublishConflict
    from trainer.lifecycle import NoSuchVersion

    async def go() -> Any:
        await check_connection(settings.kafka)
        return await asyncio.wait_for(action(settings), timeout)

    try:
        return int(asyncio.run(go()))
    except (NoSuchVersion, PublishConflict, OpenTransaction, SettingsError) as exc:
        return _fail(str(exc))
    except errors as exc:
        return _fail(str(exc))
    except _kafka_errors() as exc:
        return _fail(describe_kafka_error(exc, settings.kafka.bootstrap_servers))


def cmd_models(args: argparse.Namespace) -> int:
    from trainer.lifecycle import format_rows, list_versions

    async def show(settings: TrainerSettings) -> int:
        rows = await list_versions(settings, settings.model_name)
        if args.json:
            print(json.dumps([r.to_json() for r in rows]))
        elif rows:
            print(format_rows(rows))
        else:
            print(f"no versions of {settings.model_name!r}", file=sys.stderr)
        return 0

    return _with_kafka(args, show)


def cmd_rollback(args: argparse.Namespace) -> int:
    from trainer.lifecycle import rollback

    async def roll(settings: TrainerSettings) -> int:
        model = await rollback(settings, settings.model_name, args.to)
        print(
            f"rolled {settings.model_name!r} back to version {args.to}'s parameters: "
            f"published as version {model.version}",
            file=sys.stderr,
        )
        return 0

    # The publication inside is bounded by its publisher (COMMAND_PUBLISH_SECONDS), which can
    # tell a timeout before its commit from one after it; an outer timeout could not.
    return _with_kafka(args, roll, timeout=None)


def cmd_publish(args: argparse.Namespace) -> int:
    """Publishes a params file as the next version, through the trainer's guards (exit 3 when
    one refuses it)."""
    from kafka_common.params_topic import StaleState
    from mixture.params import ParamsError
    from trainer.publish_file import publish_params

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        model = ModelParams.loads(pathlib.Path(args.params).read_bytes())
        data = (args.data, load_points(args.data, columns)) if args.data else None
    except OSError as exc:
        return _fail(f"cannot read {args.params}: {exc.strerror}")
    except ParamsError as exc:
        return _fail(f"{args.params} is not a params record a worker serves: {exc}")
    except DataError as exc:
        return _fail(str(exc))
    if args.out and not _writable(args.out):  # found out before, not after, publishing
        return _fail(f"cannot write --out {args.out}")
    outcome: list[Any] = []

    async def go(settings: TrainerSettings) -> int:
        try:
            outcome.append(await publish_params(settings, model, data))
        except StaleState as exc:
            raise PublishRace(
                f"the served version changed while this model was judged ({exc}): run again"
            ) from None
        except DataError as exc:
            raise PublishRace(f"{args.data}: {exc}") from None
        return 0

    code = _with_kafka(args, go, (PublishRace, TimeoutError), timeout=None)
    if code or not outcome:
        return code
    done = outcome[0]
    against = f"version {done.compared_with}" if done.compared_with else "no served model"
    on = " and ".join(f"{len(j.points)} points of the {j.source}" for j in done.judged)
    if done.rejection is not None:
        print(
            f"{PROG}: refused ({done.rejection.reason}): {done.rejection.detail} "
            f"[judged against {against}]",
            file=sys.stderr,
        )
        return 3
    if done.stage == "unchanged":
        print(
            f"version {done.model.version} already serves these parameters: nothing published",
            file=sys.stderr,
        )
        return 0
    replaced = (
        f"; it replaces candidate {done.replaced_candidate}"
        if done.replaced_candidate is not None
        else ""
    )
    line = (
        f"published {done.model.metadata.extra.get('model_name')!r} version "
        f"{done.model.version} as {done.stage} (judged on {on} against {against}){replaced}"
    )
    if args.out:  # the record as published: its version, its labels aligned with the served
        try:
            pathlib.Path(args.out).write_text(done.model.dumps() + "\n")
        except OSError as exc:
            return _fail(f"{line}; could not write --out {args.out}: {exc.strerror}")
    print(line, file=sys.stderr)
    return 0


def _writable(path: str) -> bool:
    """Whether `path` can be written (an existing file, or a new one in a writable folder)."""
    p = pathlib.Path(path)
    if p.exists():
        return p.is_file() and os.access(p, os.W_OK)
    return p.parent.is_dir() and os.access(p.parent, os.W_OK)


class PublishRace(RuntimeError):
    """The served model changed between the guards and the publication."""


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = TrainerSettings.from_env()
    except SettingsError as exc:
        return _fail(str(exc))
    if args.posterior is not None:
        settings = dataclasses.replace(settings, posterior=args.posterior)
    from kafka_common.connection import check_connection, describe_kafka_error
    from trainer.main import run

    try:
        asyncio.run(check_connection(settings.kafka))
        return run(settings, once=args.once)
    except _kafka_errors() as exc:
        return _fail(describe_kafka_error(exc, settings.kafka.bootstrap_servers))
    except KeyboardInterrupt:
        return 130


def _covariance(value: str) -> str:
    try:
        return check_covariance(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a model to a data file and write its parameters JSON")
    fit.add_argument(
        "--data", required=True, help="CSV with a header, or JSON lines with an 'x' field"
    )
    fit.add_argument("--columns", help="comma-separated CSV columns to use (default: all)")
    fit.add_argument(
        "--components",
        "-k",
        default="2",
        help="number of components K, or auto: the lowest BIC of K = 1..--max-components",
    )
    fit.add_argument(
        "--max-components",
        type=int,
        default=DEFAULT_MAX_COMPONENTS,
        help="largest K that --components auto tries (default %(default)s)",
    )
    fit.add_argument(
        "--covariance",
        type=_covariance,
        default="tied-diag",
        help="covariance type: tied-diag (the tutorial's shared scale; default), diag, "
        "spherical, tied or full",
    )
    fit.add_argument(
        "--reg-covar",
        type=float,
        default=DEFAULT_REG_COVAR,
        help="covariance floor, relative to each column's variance (default %(default)g)",
    )
    fit.add_argument(
        "--priors",
        choices=("data", "seed"),
        default="data",
        help="'seed': the tutorial's priors exactly; 'data': weak priors placed on the data",
    )
    fit.add_argument(
        "--per-component-scale", action="store_true", help="older name of --covariance diag"
    )
    fit.add_argument(
        "--restarts", type=int, default=100, help="initial candidates scored (see --init)"
    )
    fit.add_argument(
        "--init",
        choices=INITS,
        default="kmeans++",
        help="how candidates start: 'kmeans++' (seeds refined by k-means) or 'random' (data "
        "points drawn uniformly, as the tutorial does)",
    )
    fit.add_argument("--seed", type=int, default=0, help="RNG seed")
    fit.add_argument(
        "--version",
        type=int,
        default=0,
        help="model version to write (0: a params file serves until the topic has a version)",
    )
    fit.add_argument("--out", default="params.json", help="output path, or - for stdout")
    fit.add_argument(
        "--processes",
        type=int,
        default=1,
        help="fit one window held in parts by this many processes (hosts), each started with "
        "its own part as --data (default %(default)s); process 0 writes --out",
    )
    fit.add_argument(
        "--process-id", type=int, default=0, help="this process's place, 0..--processes - 1"
    )
    fit.add_argument(
        "--coordinator",
        help="host:port where process 0 coordinates the processes (jax.distributed)",
    )
    fit.add_argument(
        "--publish",
        action="store_true",
        help="also publish it to the params topic as the next version (bootstrap)",
    )
    fit.set_defaults(func=cmd_fit)
    run = sub.add_parser("run", help="the trainer job: refit on the input stream and publish")
    run.add_argument(
        "--once",
        action="store_true",
        help="one cycle, print its summary as JSON, exit (3: nothing published)",
    )
    run.add_argument(
        "--posterior",
        choices=("none", "nuts"),
        help="after publishing, sample the posterior with NUTS into the report "
        "(default: GMM_TRAIN_POSTERIOR)",
    )
    run.set_defaults(func=cmd_run)
    name_help = "model name (default: GMM_MODEL_NAME)"
    models = sub.add_parser("models", help="list every published version of a model")
    models.add_argument("--name", help=name_help)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=cmd_models)
    rollback = sub.add_parser(
        "rollback", help="publish an earlier version's parameters as the next version"
    )
    rollback.add_argument("--to", type=int, required=True, help="the version to roll back to")
    rollback.add_argument("--name", help=name_help)
    rollback.set_defaults(func=cmd_rollback)
    publish = sub.add_parser(
        "publish",
        help="publish a params file made anywhere as the next version, through the trainer's "
        "guards (judged on the input window and --data; exit 3 when one refuses it)",
    )
    publish.add_argument("--params", required=True, help="a gmm-params/2 (or /1) JSON file")
    publish.add_argument(
        "--data",
        help="points to judge it on besides the input topic's recent window (CSV with a "
        "header, or JSON lines with an 'x' field; needed while the window is too small)",
    )
    publish.add_argument("--columns", help="comma-separated CSV columns to use (default: all)")
    publish.add_argument("--name", help=name_help)
    publish.add_argument(
        "--out", help="also write the record as published (version, aligned labels) here"
    )
    publish.set_defaults(func=cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    enable_fit_caches(cache_dir_from_env())  # GMM_JAX_CACHE_DIR, before any compile
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
