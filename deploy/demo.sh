#!/usr/bin/env bash
# `make demo`: Kafka (already up via make), a first model, the worker and the load generator.
# Leaves Kafka and the worker running; `make demo-down` stops both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
RUN=.run/demo
mkdir -p "$RUN"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
PORT="${GMM_WORKER_WEB_PORT:-6066}"

echo "== 1. a first model: gmm-trainer fit on a sample, published to gmm.params (--publish)"
$BIN/python - <<'PY' >"$RUN/sample.jsonl"
import json, numpy as np
rng = np.random.default_rng(0)
for i, x in enumerate(np.where(rng.random(2000) < 0.4, rng.normal(0, 1, 2000), rng.normal(10, 1, 2000))):
    print(json.dumps({"id": f"s-{i}", "x": float(x)}))
PY
$BIN/gmm-trainer fit --data "$RUN/sample.jsonl" --out "$RUN/params.json" --publish

echo "== 2. the stream worker (log: $RUN/worker.log)"
if [[ -f "$RUN/worker.pid" ]] && kill -0 "$(cat "$RUN/worker.pid")" 2>/dev/null; then
  echo "worker already running (pid $(cat "$RUN/worker.pid"))"
else
  GMM_WORKER_WEB_PORT="$PORT" GMM_LOG_LEVEL=warn \
    setsid $BIN/gmm-worker >"$RUN/worker.log" 2>&1 </dev/null &
  echo $! >"$RUN/worker.pid"
fi
for _ in $(seq 1 240); do
  if curl -sf "localhost:$PORT/ready" >/dev/null 2>&1; then break; fi
  kill -0 "$(cat "$RUN/worker.pid")" 2>/dev/null || { tail -20 "$RUN/worker.log"; echo "demo: the worker exited" >&2; exit 1; }
  sleep 0.5
done
echo "ready: $(curl -s "localhost:$PORT/ready")"

echo "== 3. 20,000 points at 4,000/s through gmm.points (gmm-produce)"
$BIN/gmm-produce --count 20000 --rate 4000 --locs 0,10 --weights 0.4,0.6 --id-prefix "demo-$(date +%s)"

echo "== 4. assignments flowing out of gmm.assignments (the last 5)"
$BIN/python - <<'PY'
import asyncio, json, os
from aiokafka import AIOKafkaConsumer, TopicPartition
async def main():
    c = AIOKafkaConsumer(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"])
    await c.start(); await asyncio.sleep(0)
    try:
        for _ in range(50):
            parts = c.partitions_for_topic("gmm.assignments")
            if parts: break
            await c._client.force_metadata_update(); await asyncio.sleep(0.1)
        tps = [TopicPartition("gmm.assignments", p) for p in parts]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        for tp in tps: c.seek(tp, max(0, ends[tp] - 3))
        got = []
        for _ in range(10):
            for recs in (await c.getmany(timeout_ms=500)).values(): got += recs
            if len(got) >= 5: break
        for r in got[:5]:
            d = json.loads(r.value)
            print(f"  id={d['id']:<22} x={d['x']:8.3f} -> component {d['assignment']} "
                  f"p={max(d['probs']):.3f} model v{d['model_version']}")
    finally:
        await c.stop()
asyncio.run(main())
PY
echo "== 5. the trainer refits on the stream's newest points (gmm-trainer run --once; reports in reports/)"
before=$(curl -s "localhost:$PORT/ready" | $BIN/python -c 'import json,sys; print(json.load(sys.stdin)["model_version"])')
GMM_TRAIN_WINDOW_RECORDS=20000 GMM_LOG_LEVEL=warn $BIN/gmm-trainer run --once 2>"$RUN/trainer.log" | tail -1
for _ in $(seq 1 50); do
  now=$(curl -s "localhost:$PORT/ready" | $BIN/python -c 'import json,sys; print(json.load(sys.stdin)["model_version"])')
  [[ "$now" != "$before" ]] && break
  sleep 0.2
done
echo "the worker switched from model v$before to v$now without a restart"
echo "== 6. the trainer job in the background (a refit a minute; metrics on :6067)"
start_bg() {  # name, command...
  local name=$1; shift
  if [[ -f "$RUN/$name.pid" ]] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return
  fi
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}
GMM_TRAIN_INTERVAL_SECONDS=60 GMM_TRAIN_WINDOW_RECORDS=20000 start_bg trainer $BIN/gmm-trainer run
if command -v prometheus >/dev/null 2>&1; then
  echo "== 7. Prometheus on :9090, scraping the worker and the trainer (deploy/prometheus config)"
  $BIN/python - "$RUN/prometheus.yml" "$PORT" <<'PY'
import os, sys, yaml
config = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
# The alert and recording rules from the repository; no Alertmanager here (Prometheus shows
# the alerts at /alerts; docker compose runs Alertmanager).
config["rule_files"] = [os.path.abspath(os.path.join("deploy/prometheus", f)) for f in config["rule_files"]]
config.pop("alerting", None)
targets = {"gmm-worker": f"127.0.0.1:{sys.argv[2]}", "gmm-trainer": "127.0.0.1:6067"}
for job in config["scrape_configs"]:
    job.pop("dns_sd_configs", None)
    job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
yaml.safe_dump(config, open(sys.argv[1], "w"))
PY
  start_bg prometheus prometheus --config.file="$RUN/prometheus.yml" \
    --storage.tsdb.path="$RUN/prometheus-data" --web.listen-address=127.0.0.1:9090
  PROM_MSG="  prometheus http://localhost:9090  (try: sum(rate(gmm_records_in_total[1m])); alerts: /alerts)"
else
  PROM_MSG="  prometheus not installed here (apt-get install prometheus); docker compose runs it with Grafana"
fi
echo "== metrics"
curl -s "localhost:$PORT/metrics" | grep -E '^gmm_(records_in_total|assignments_out_total\{[^}]*\}|model_version|compilations_total|recent_log_likelihood_mean) ' || true
cat <<MSG

Running: Kafka on $KAFKA_BOOTSTRAP_SERVERS, the worker and the trainer (logs in $RUN/).
  metrics    http://localhost:$PORT/metrics   (worker; /ready, /health beside it)
             http://localhost:6067/metrics   (trainer)
$PROM_MSG
  reports    reports/gmm/v<N>/  (loss.png, grad_norms.png, density.png, summary.json)
  more load  $BIN/gmm-produce --count 0 --rate 2000        (Ctrl-C to stop)
  watch      kcat -C -b $KAFKA_BOOTSTRAP_SERVERS -t gmm.assignments -o end
  stop       make demo-down
MSG
