"""The Bayesian Gaussian mixture at the heart of the service: model, MAP fit, classifier,
parameters and their checks, as modules imported by name (`from mixture.fit import fit_map`).

Pure and jittable, and it imports nothing of the project outside itself: no Faust, Kafka,
asyncio or environment access. The trainer and the stream worker both build on it; RNG keys are
always passed in explicitly.
"""
