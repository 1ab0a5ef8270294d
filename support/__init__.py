"""Process and broker helpers shared by the integration tests and the benchmarks."""
