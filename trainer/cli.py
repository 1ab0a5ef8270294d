"""`gmm-trainer`: offline fits from files (`fit`, optionally `--publish`ed) and the trainer job
(`run`, or `run --once` for one cycle). Settings for Kafka come from the environment."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import pathlib
import sys
from collections.abc import Sequence

import jax
import numpy as np
from aiokafka.errors import KafkaError

from kafka_common import params_topic
from kafka_common.connection import KafkaUnavailable, check_connection, describe_kafka_error
from kafka_common.settings import SettingsError
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.fit import DataError, FitConfig, fit_map, to_model_params
from mixture.labels import order_by_location
from mixture.params import ModelParams
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
    if args.components < 1:
        return _fail(f"--components must be >= 1, got {args.components}")
    try:
        points = load_points(args.data, columns)
        config = FitConfig(
            n_components=args.components,
            per_component_scale=args.per_component_scale,
            priors=args.priors,
            n_init=args.restarts,
        )
        progress = _progress_printer()
        result = fit_map(points, jax.random.PRNGKey(args.seed), config, progress=progress)  # type: ignore[arg-type]
        if progress is not None:
            print(file=sys.stderr)
    except DataError as exc:
        return _fail(str(exc))
    # A first fit's labels follow location, as the trainer's do.
    result = result._replace(params=order_by_location(result.params))
    fitted_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    model = to_model_params(result, args.version, len(points), fitted_at)
    if args.publish:
        try:
            model = asyncio.run(_publish(model))
        except SettingsError as exc:
            return _fail(str(exc))
        except (KafkaUnavailable, TimeoutError, KafkaError, OSError, LookupError) as exc:
            settings = TrainerSettings.from_env()
            return _fail(describe_kafka_error(exc, settings.kafka.bootstrap_servers))
    text = model.dumps()
    if args.out == "-":
        print(text)
    else:
        pathlib.Path(args.out).write_text(text + "\n")
    p = result.params
    with np.printoptions(precision=4, suppress=True):
        print(
            f"fit: K={p.n_components} D={p.dim} n={len(points)} loss {result.final_loss:.4f} "
            f"(best init {result.init_loss:.4f}) steps {result.n_steps}"
            f"{'' if result.converged else ' (step cap)'} in {result.seconds:.2f}s; "
            f"weights {p.weights} locs {p.locs.squeeze(-1) if p.dim == 1 else p.locs} "
            f"scale {p.scale.squeeze()} -> {args.out}",
            file=sys.stderr if args.out == "-" else sys.stdout,
        )
    return 0


async def _publish(model: ModelParams) -> ModelParams:
    """Publishes as the next version after the newest on the params topic."""
    settings = TrainerSettings.from_env()
    await check_connection(settings.kafka)
    await ensure_topics(settings.kafka, [TopicSpec(settings.params_topic, 1, compact=True)])
    newest = await asyncio.wait_for(
        params_topic.read_newest(settings.kafka, settings.params_topic), 60
    )
    model = model.with_version((newest.version if newest else 0) + 1)
    await asyncio.wait_for(
        params_topic.publish(settings.kafka, settings.params_topic, model, settings.model_name), 60
    )
    print(f"published version {model.version} to {settings.params_topic}", file=sys.stderr)
    return model


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = TrainerSettings.from_env()
    except SettingsError as exc:
        return _fail(str(exc))
    if args.posterior is not None:
        settings = dataclasses.replace(settings, posterior=args.posterior)
    from trainer.main import run

    try:
        asyncio.run(check_connection(settings.kafka))
        return run(settings, once=args.once)
    except (KafkaUnavailable, TimeoutError, KafkaError, OSError, LookupError) as exc:
        return _fail(describe_kafka_error(exc, settings.kafka.bootstrap_servers))
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a model to a data file and write its parameters JSON")
    fit.add_argument(
        "--data", required=True, help="CSV with a header, or JSON lines with an 'x' field"
    )
    fit.add_argument("--columns", help="comma-separated CSV columns to use (default: all)")
    fit.add_argument("--components", "-k", type=int, default=2, help="number of components K")
    fit.add_argument(
        "--priors",
        choices=("data", "seed"),
        default="data",
        help="'seed': the tutorial's priors exactly; 'data': weak priors placed on the data",
    )
    fit.add_argument("--per-component-scale", action="store_true", help="one scale per component")
    fit.add_argument("--restarts", type=int, default=100, help="random initial candidates")
    fit.add_argument("--seed", type=int, default=0, help="RNG seed")
    fit.add_argument("--version", type=int, default=1, help="model version to write")
    fit.add_argument("--out", default="params.json", help="output path, or - for stdout")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
