"""`gmm-produce`: the Kafka load generator for the demo, the tests and the benchmarks."""
