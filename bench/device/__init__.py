"""The device benchmark: one short run on a GPU machine (bench/device/run.sh)."""
