"""The stream worker: a Faust app that classifies points from Kafka with the latest model."""
