# %% [markdown]
# # From a notebook to the worker
#
# Fit the service's model on a CSV in a notebook, compare it with scikit-learn's
# `GaussianMixture` on the same data, publish it as the next version of the served model, and
# watch the worker classify new points with it, exactly as `predict` does here.
#
# Run it as a script (`python examples/notebook_to_worker.py [points.csv]`) or open it as a
# notebook (the `# %%` cells are Jupytext's percent format). It needs `pip install .[notebook]`
# (scikit-learn and confluent-kafka) and a running service (`make demo`); Kafka's address and
# the topics come from the same environment variables as the worker's. Without a CSV it writes
# one like the demo's stream (`gmm-produce --locs 0,10 --weights 0.4,0.6`: 1-D points); a CSV's
# columns must be the stream's coordinates, in their order.

# %%
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from kafka_common.jax_cache import cache_dir_from_env, enable_fit_caches
from mixture.estimator import MapGaussianMixture

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
INPUT_TOPIC = os.environ.get("GMM_INPUT_TOPIC", "gmm.points")
OUTPUT_TOPIC = os.environ.get("GMM_OUTPUT_TOPIC", "gmm.assignments")
MODEL_NAME = os.environ.get("GMM_MODEL_NAME", "gmm")
WORK = pathlib.Path(tempfile.mkdtemp(prefix="gmm-notebook-"))
# The service's compilation caches (GMM_JAX_CACHE_DIR, as the trainer's): the next run of the
# notebook neither traces nor compiles the fits again.
enable_fit_caches(cache_dir_from_env())

# %% The data: a CSV with a header (or a demo one).
if len(sys.argv) > 1:
    csv = pathlib.Path(sys.argv[1])
else:
    rng = np.random.default_rng(7)
    demo = np.where(rng.random(3000) < 0.4, rng.normal(0, 1, 3000), rng.normal(10, 1, 3000))
    csv = WORK / "points.csv"
    np.savetxt(csv, demo[:, None], delimiter=",", header="x", comments="")
x = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
fit_part, new_points = x[: len(x) * 9 // 10], x[len(x) * 9 // 10 :]
print(f"{len(x)} points in D={x.shape[1]} from {csv}")

# %% Fit both, on the same terms: K by BIC here, then the same K and starts for both.
started = time.perf_counter()
ours = MapGaussianMixture("auto", max_components=5, covariance_type="full", random_state=0)
ours.fit(fit_part)
our_seconds = time.perf_counter() - started
k = ours.n_components_
started = time.perf_counter()
theirs = GaussianMixture(k, covariance_type="full", random_state=0).fit(fit_part)
their_seconds = time.perf_counter() - started
print(f"K={k} by BIC ({', '.join(f'K={j}: {b:.1f}' for j, b in ours.bics_.items())})")
print("                      ours        scikit-learn")
print(f"mean log-likelihood   {ours.score(new_points):<11.4f} {theirs.score(new_points):.4f}")
print(f"BIC                   {ours.bic(fit_part):<11.1f} {theirs.bic(fit_part):.1f}")
print(f"seconds (with K=1..5) {our_seconds:<11.2f} {their_seconds:.2f}")
agreement = adjusted_rand_score(ours.predict(new_points), theirs.predict(new_points))
print(f"the two agree on the held-out points: adjusted Rand index {agreement:.3f}")

# %% Publish it as the next version, through the trainer's guards (judged on the CSV).
params_file = WORK / "params.json"
params_file.write_text(ours.to_params().dumps())
as_published = WORK / "published.json"
published = subprocess.run(
    [
        *(sys.executable, "-m", "trainer.cli", "publish"),  # the gmm-trainer command
        *("--params", str(params_file), "--data", str(csv), "--out", str(as_published)),
    ],
    capture_output=True,
    text=True,
)
print(published.stderr.strip())
if published.returncode != 0:
    sys.exit(published.returncode)
if not as_published.exists():  # the served version already has these parameters
    sys.exit(0)
# As published: the file's parameters, versioned, their labels aligned with the served model's.
record = MapGaussianMixture.from_params(as_published)
published_json = json.loads(as_published.read_text())
version = published_json["version"]
if published_json["metadata"].get("stage") == "candidate":
    print("published as a candidate (GMM_PROMOTION=shadow): the trainer promotes it once workers")
    print("have scored it in shadow (`gmm-trainer models` shows it)")
    sys.exit(0)

# %% Watch the worker: read the assignments topic from its end, send the held-out points.
consumer = Consumer(
    {
        "bootstrap.servers": BOOTSTRAP,
        "group.id": f"notebook-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
    }
)
partitions = consumer.list_topics(OUTPUT_TOPIC, timeout=30).topics[OUTPUT_TOPIC].partitions
consumer.assign(
    [
        TopicPartition(
            OUTPUT_TOPIC, p, consumer.get_watermark_offsets(TopicPartition(OUTPUT_TOPIC, p))[1]
        )
        for p in partitions
    ]
)
producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
tag = uuid.uuid4().hex[:8]


def send(rows: np.ndarray, prefix: str) -> dict[str, int]:
    ids = {}
    for i, row in enumerate(rows):
        rid = f"{prefix}-{tag}-{i}"
        producer.produce(INPUT_TOPIC, json.dumps({"id": rid, "x": row.tolist()}), key=rid)
        ids[rid] = i
    producer.flush(30)
    return ids


def read(ids: dict[str, int], deadline: float) -> dict[str, dict]:
    seen: dict[str, dict] = {}
    while len(seen) < len(ids) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        out = json.loads(message.value())
        if out.get("id") in ids:
            seen[out["id"]] = out
    return seen


# The worker follows the params topic; a probe shows when it serves the new version.
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    probe = read(send(new_points[:1], "probe"), time.monotonic() + 10)
    if any(out["model_version"] >= version for out in probe.values()):
        break
ids = send(new_points, "nb")
outputs = read(ids, time.monotonic() + 120)
consumer.close()
assert len(outputs) == len(ids), f"{len(outputs)} of {len(ids)} assignments arrived"
# Assignments by our version are compared with predict(); a trainer job may already have
# published a refit of it (a later version: its own labels are aligned with ours).
ours_rows = np.array([outputs[rid]["model_version"] == version for rid in ids])
worker_labels = np.array([outputs[rid]["assignment"] for rid in ids])
# The worker computes in float32: a point within float32 of a tie may go either way.
proba = np.sort(record.predict_proba(new_points), axis=1)
clear = (proba[:, -1] - proba[:, -2] > 1e-4) & ours_rows
same = worker_labels[clear] == record.predict(new_points)[clear]
later = sorted({outputs[rid]["model_version"] for rid in ids} - {version})
print(
    f"the worker served {MODEL_NAME!r} version {version} to {int(ours_rows.sum())} of {len(ids)} "
    f"new points: {int(same.sum())} of {int(clear.sum())} assignments equal predict() "
    f"({int((ours_rows & ~clear).sum())} within float32 of a tie)"
    + (f"; later versions {later} took the rest" if later else "")
)
sys.exit(0 if ours_rows.any() and same.all() else 1)
