"""The device benchmark's report: markdown tables and a short summary from its results."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from bench._common import markdown_table
from stream_app.settings import DEFAULT_MAX_BATCH, SLICE_RECORDS_ACCELERATOR, SLICE_RECORDS_CPU


def best_pps(rows: list[dict], model: str, backend: str, batch: int, method: str) -> float | None:
    for r in rows:
        if (r["model"], r["backend"], r["batch"]) == (model, backend, batch):
            return r["points_per_second"][method]
    return None


def _crossing(row: dict) -> tuple[str, str]:
    """(bytes, transfer time) of the points and of the per-component residuals, as 'a / b'."""
    transfer = row.get("transfer")
    if not transfer:
        return "-", "-"
    names = ("points", "per_component_residuals")
    size = " / ".join(f"{transfer['bytes'][n] / 1e6:,.3g}" for n in names)
    seconds = " / ".join(f"{1e3 * transfer['seconds'][n]:,.3g}" for n in names)
    return size, seconds


def classifier_md(rows: list[dict]) -> str:
    table = [
        [
            r["model"],
            r["backend"],
            f"{r['batch']:,}",
            r["points_per_second"]["infer_discrete"],
            r["points_per_second"]["infer_discrete_program"],
            r["points_per_second"]["closed_form"],
            r["points_per_second"]["infer_discrete"] / r["points_per_second"]["closed_form"],
            r["points_per_second"]["infer_discrete_program"]
            / r["points_per_second"]["closed_form"],
            r["first_call_seconds"],
            *_crossing(r),
        ]
        for r in rows
    ]
    header = ["model", "backend", "batch", "infer_discrete, worker's call (pts/s)"]
    header += ["infer_discrete, program alone (pts/s)", "closed form (pts/s)"]
    header += ["call / closed form", "program / closed form", "first call, compile incl. (s)"]
    header += ["to device, points / per-component residuals (MB)", "transfer (ms)"]
    md = (
        "## Classifier\n\n"
        "Best of repeated calls, each returning assignments, probabilities and log p(x) to the "
        'host. "Worker\'s call" is `Classifier.__call__` on float64 points (NaN check, copy '
        "into the buffer they cross from, then the program, which takes each residual in "
        'float64 on the device); "program alone" is its compiled infer_discrete program on '
        "the points as they cross (their float64 bits), and the closed form takes the same "
        "residuals from the same input. The last two columns: what crosses to the device per "
        "batch, the points (B x D float64) against the per-component float32 residuals "
        "(K x B x D) the classifier shipped when it took them on the host, and each one's "
        "transfer alone (`jax.device_put`).\n\n" + markdown_table(header, table)
    )
    gpu = sorted({r["backend"] for r in rows} - {"cpu"})
    if gpu:
        ratios = []
        for model in dict.fromkeys(r["model"] for r in rows):
            for b in dict.fromkeys(r["batch"] for r in rows):
                line: list[Any] = [model, f"{b:,}"]
                for method in ("infer_discrete", "infer_discrete_program", "closed_form"):
                    g = best_pps(rows, model, gpu[0], b, method)
                    c = best_pps(rows, model, "cpu", b, method)
                    line.append(g / c if g and c else "-")
                ratios.append(line)
        md += f"\n{gpu[0].upper()} over CPU backend, same machine and run:\n\n" + markdown_table(
            ["model", "batch", "worker's call", "program alone", "closed form"], ratios
        )
    return md


def serving_md(rows: list[dict]) -> str:
    table = [
        [
            r["model"],
            r["backend"],
            f"{r['slice']:,}",
            r["records_per_second"],
            r["microseconds_per_record"]["parse"],
            r["microseconds_per_record"]["classify"],
            r["microseconds_per_record"]["encode"],
            f"{100 * r['classify_share']:.0f}%",
            r["host_only_records_per_second"],
        ]
        for r in rows
    ]
    header = ["model", "backend", "slice", "records/s", "parse (µs/record)"]
    header += ["classify (µs/record)", "encode (µs/record)", "classify share"]
    header += ["host-only bound (records/s)"]
    return (
        "## Serving path, no Kafka\n\n"
        "The worker's own steps (`stream_app.batch.parse_slice` -> `classify_slice` -> "
        "`encode_slice`) over JSON records, one slice after another on one thread. "
        '"Host-only bound" is parse and encode alone: no device makes a worker faster than '
        f"that. The worker's slice is the whole batch (up to {SLICE_RECORDS_CPU} records; at "
        f"the default batch, {DEFAULT_MAX_BATCH}) on a CPU and {SLICE_RECORDS_ACCELERATOR} on a "
        "GPU (`GMM_SLICE_RECORDS=0`).\n\n" + markdown_table(header, table)
    )


def _fit_seconds(fit: dict) -> str:
    if fit["finished"]:
        return f"{fit['seconds']:.3g}"
    projected = fit.get("projected_seconds")
    extra = f", projected {projected:.3g}" if projected is not None else ""
    return f"stopped at {fit['seconds']:.3g} ({fit['steps']} steps{extra})"


def fits_md(rows: list[dict], config: dict[str, Any]) -> str:
    table = []
    for r in rows:
        warm = r["warm"]
        table.append(
            [
                f"{r['n_points']:,}",
                r["backend"],
                r["compile"]["seconds"],
                _fit_seconds(r["cold"]),
                r["cold"]["steps"],
                r["cold"].get("seconds_per_step", "-"),
                _fit_seconds(warm[0]) if warm else "-",
                " / ".join(_fit_seconds(w) for w in warm[1:]) or "-",
                " / ".join(str(w["steps"]) for w in warm[1:]) or "-",
                " / ".join(str(w.get("candidates_optimised", "-")) for w in warm[1:]) or "-",
            ]
        )
    header = ["points", "backend", "compile: scoring + 1st chunk (s)", "cold (s)", "cold steps"]
    header += ["cold s/step (steady)", "warm 1st refit, compile incl. (s)", "warm refits (s)"]
    header += ["warm steps", "candidates optimised"]
    return (
        "## MAP fits (the trainer's FitConfig)\n\n"
        f"`fit_map` with K={config['n_components']}, {config['covariance']}, "
        f"n_init={config['n_init']} candidates scored, the best {config['n_best']} optimised, "
        "on draws from a 1-D two-component mixture. Cold: no warm start, its programs "
        "compiled by a first call stopped after its first chunk. Warm: each refit starts "
        "from the previous fit, on a fresh window, as the trainer's refits do (1 candidate "
        "optimised: the warm start scored best and alone was optimised). A stopped fit ran "
        "into its deadline; its projection is its first chunk plus its steady seconds per "
        "step for the steps the GPU's fit of the same window took.\n\n"
        + markdown_table(header, table)
    )


def _ratio(row: dict, method: str) -> float:
    """A classifier row's points/s for `method` over the closed form's."""
    pps = row["points_per_second"]
    return pps[method] / pps["closed_form"]


def summary(payload: dict) -> list[str]:
    """Short lines: the headline figures and, with a GPU, the issue's targets."""
    lines = []
    rows = payload.get("classifier", [])
    names = [b["name"] for b in payload["machine"]["backends"]]
    gpu = next((n for n in names if n != "cpu"), None)
    for model in dict.fromkeys(r["model"] for r in rows):
        for backend in names:
            mine = [r for r in rows if r["model"] == model and r["backend"] == backend]
            if not mine:
                continue
            top = max(mine, key=lambda r: r["points_per_second"]["infer_discrete"])
            big = [r for r in mine if r["batch"] >= 4096] or mine
            call = min(_ratio(r, "infer_discrete") for r in big)
            program = min(_ratio(r, "infer_discrete_program") for r in big)
            lines.append(
                f"classifier {model} on {backend}: peak "
                f"{top['points_per_second']['infer_discrete']:,.0f} pts/s at batch "
                f"{top['batch']:,}; infer_discrete / closed form at batch >= 4,096 at least "
                f"{call:.2f} (worker's call), {program:.2f} (program alone)"
            )
            largest = max(mine, key=lambda r: r["batch"])
            if largest.get("transfer"):
                size, seconds = _crossing(largest)
                lines.append(
                    f"to device on {backend}, {model}, batch {largest['batch']:,}: points / "
                    f"per-component residuals {size} MB, {seconds} ms"
                )
        if gpu:
            ratios = [
                g / c
                for b in dict.fromkeys(r["batch"] for r in rows)
                if b >= 65536
                and (g := best_pps(rows, model, gpu, b, "infer_discrete"))
                and (c := best_pps(rows, model, "cpu", b, "infer_discrete"))
            ]
            if ratios:
                lines.append(
                    f"classifier {model}: {gpu} / cpu at batch >= 65,536: "
                    f"{min(ratios):.1f}x-{max(ratios):.1f}x (target >= 10x for the wide model)"
                )
    for r in payload.get("serving", []):
        default = DEFAULT_MAX_BATCH if r["backend"] == "cpu" else SLICE_RECORDS_ACCELERATOR
        if r["slice"] == default:
            lines.append(
                f"serving {r['model']} on {r['backend']}, slice {r['slice']}: "
                f"{r['records_per_second']:,.0f} records/s, classify "
                f"{100 * r['classify_share']:.0f}% of the time, host-only bound "
                f"{r['host_only_records_per_second']:,.0f} records/s"
            )
    fits = payload.get("fit", [])
    for r in fits:
        warm = " / ".join(_fit_seconds(w) for w in r["warm"][1:]) or "-"
        lines.append(
            f"fit {r['n_points']:,} on {r['backend']}: cold {_fit_seconds(r['cold'])} s, "
            f"warm {warm} s"
        )
    for n in dict.fromkeys(r["n_points"] for r in fits) if gpu else ():
        g = next((r for r in fits if r["n_points"] == n and r["backend"] == gpu), None)
        c = next((r for r in fits if r["n_points"] == n and r["backend"] == "cpu"), None)
        if g is None or c is None:
            continue
        cold = _seconds(c["cold"]) / _seconds(g["cold"])
        line = f"fit {n:,}: cpu / {gpu} cold {cold:.1f}x"
        if g["warm"][1:] and c["warm"][1:]:
            worst = max(map(_seconds, c["warm"][1:])) / max(map(_seconds, g["warm"][1:]))
            line += f", warm {worst:.1f}x (worst rounds; target >= 5x at 1,000,000)"
        lines.append(line)
    lines += [f"skipped: {s}" for s in payload.get("skipped", [])]
    lines += [f"FAILED: {k}: {v}" for k, v in payload.get("errors", {}).items()]
    return lines


def _seconds(fit: dict) -> float:
    return fit["seconds"] if fit["finished"] else fit.get("projected_seconds", fit["seconds"])


def write(out: pathlib.Path, name: str, payload: dict) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    m = payload["machine"]
    kinds = ", ".join(
        b["name"] if b["kind"] in ("", b["name"]) else f"{b['name']} ({b['kind']})"
        for b in m["backends"]
    )
    md = (
        "# Device benchmark\n\n"
        f"`bash bench/device/run.sh{' --quick' if payload['quick'] else ''}`; backends: {kinds}; "
        f"{m['cpus']} CPUs, {m['machine']}, Python {m['python']}, JAX "
        f"{m['versions']['jax']}, NumPyro {m['versions']['numpyro']}. One process and one run, "
        f"{payload.get('wall_seconds', 0):.0f} s; budget {payload['budget_s']:.0f} s.\n\n"
    )
    if not payload["gpu_seen"]:
        md += "**JAX saw no GPU: the CPU backend alone was measured.**\n\n"
    md += "Summary:\n\n" + "".join(f"- {line}\n" for line in summary(payload)) + "\n"
    if payload.get("classifier"):
        md += classifier_md(payload["classifier"]) + "\n"
    if payload.get("serving"):
        md += serving_md(payload["serving"]) + "\n"
    if payload.get("fit"):
        md += fits_md(payload["fit"], payload["fit_config"]) + "\n"
    if payload.get("gpu_memory"):
        md += f"GPU allocator after the run: {payload['gpu_memory']}\n"
    (out / f"{name}.md").write_text(md)
    return out / f"{name}.md"
