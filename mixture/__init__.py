"""The Bayesian Gaussian mixture at the heart of the service.

Model, MAP fit, classifier and parameters; `classify_cli` is the offline `gmm-classify`.

Pure and jittable: no Faust, Kafka, asyncio or environment access. The trainer and the stream
worker both build on it; RNG keys are always passed in explicitly.
"""

from mixture.classify import (
    Classification,
    Classifier,
    Prepared,
    classifier_for,
    make_classifier,
)
from mixture.fit import DataError, FitConfig, FitResult, as_points, fit_map
from mixture.params import (
    FitMetadata,
    MixtureParams,
    ModelParams,
    ParamsError,
    Priors,
    data_priors,
    seed_priors,
)
from mixture.points import Point, PointError, decode_point, parse_point

__all__ = [
    "Classification",
    "Classifier",
    "DataError",
    "FitConfig",
    "FitMetadata",
    "FitResult",
    "MixtureParams",
    "ModelParams",
    "ParamsError",
    "Point",
    "PointError",
    "Prepared",
    "Priors",
    "as_points",
    "classifier_for",
    "data_priors",
    "decode_point",
    "fit_map",
    "make_classifier",
    "parse_point",
    "seed_priors",
]
