"""Kafka plumbing shared by the worker and the trainer: typed settings from the environment,
client options (SASL/SSL included), topic creation, and reading the compacted params topic."""
