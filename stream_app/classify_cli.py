"""`gmm-classify`: classify JSON-lines points from stdin with a parameters file (offline).

Uses the worker's code paths: the same point rules, the same jitted classifier and the same
assignment record (`wire.assignment`: `source` and `ts_in` null, `id` the line number unless
the point has one). Each bad line gets a one-line error on stderr; all valid lines are
classified; the exit code is 1 if any line was bad, 2 for bad arguments or parameters.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

from kafka_common.jax_cache import cache_dir_from_env, enable_compilation_cache
from mixture.classify import classifier_for
from mixture.params import ModelParams, ParamsError
from mixture.points import PointError, decode_point
from wire import assignment as assignment_format

PROG = "gmm-classify"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--params", required=True, help="parameters JSON (from gmm-trainer fit)")
    parser.add_argument(
        "--temperature",
        type=int,
        choices=(0, 1),
        default=0,
        help="0: MAP assignment; 1: a posterior sample",
    )
    parser.add_argument("--seed", type=int, default=0, help="RNG seed for temperature 1")
    parser.add_argument("--batch", type=int, default=4096, help="largest compiled batch")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if not 0 <= args.seed < 2**63:
        parser.error(f"--seed must be in [0, 2**63), got {args.seed}")
    # The CLI reads GMM_JAX_CACHE_DIR (kafka_common.jax_cache); the model package never does.
    enable_compilation_cache(cache_dir_from_env())

    try:
        model = ModelParams.loads(pathlib.Path(args.params).read_bytes())
    except OSError as exc:
        print(f"{PROG}: error: cannot read {args.params}: {exc.strerror}", file=sys.stderr)
        return 2
    except ParamsError as exc:
        print(f"{PROG}: error: {args.params}: invalid parameters: {exc}", file=sys.stderr)
        return 2
    params = model.mixture
    classifier = classifier_for(params, temperature=args.temperature, max_batch=args.batch)

    ids, xs, scalars, lines, bad, written = [], [], [], [], 0, 0
    for lineno, line in enumerate(sys.stdin.buffer, 1):
        if not line.strip():
            continue
        try:
            point = decode_point(line.rstrip(b"\r\n"), params.dim)
        except PointError as exc:
            print(f"{PROG}: line {lineno}: {exc.reason}: {exc}", file=sys.stderr)
            bad += 1
            continue
        ids.append(lineno if point.id is None else point.id)
        lines.append(lineno)
        xs.append(point.x)
        scalars.append(point.scalar)

    if xs:
        # None (a missing coordinate) becomes NaN, which the classifier marginalises out.
        x = np.array(xs, dtype=np.float64)
        result = classifier(x, params, jax.random.PRNGKey(args.seed))
        out = sys.stdout
        name = str(model.metadata.extra.get("model_name", "gmm"))
        finite = result.finite()
        for i, point_id in enumerate(ids):
            if not finite[i]:  # as the worker dead-letters it: float32 overflowed on this point
                print(
                    f"{PROG}: line {lines[i]}: not_classifiable: the model's float32 "
                    "arithmetic overflowed on this point",
                    file=sys.stderr,
                )
                bad += 1
                continue
            value = assignment_format.encode(
                point_id,
                xs[i],
                scalars[i],
                int(result.assignment[i]),
                [float(p) for p in result.probs[i]],
                float(result.log_likelihood[i]),
                name,
                model.version,
                None,
                time.time(),
                None,
            )
            out.write(value.decode() + "\n")
            written += 1
    if bad:
        print(f"{PROG}: {bad} bad line(s) skipped, {written} classified", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
