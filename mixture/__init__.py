"""The Bayesian Gaussian mixture at the heart of the service.

Model, MAP fit, classifier and parameters; `classify_cli` is the offline `gmm-classify`.

Pure and jittable: no Faust, Kafka, asyncio or environment access. The trainer and the stream
worker both build on it; RNG keys are always passed in explicitly.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each public name lives. Imported on first use (PEP 562), so that importing one module
#: of the package (a CLI's fit) does not import them all (the classifier imports NumPyro).
_HOMES = {
    **dict.fromkeys(
        ("Classification", "Classifier", "Prepared", "classifier_for", "make_classifier"),
        "mixture.classify",
    ),
    **dict.fromkeys(("DataError", "FitConfig", "FitResult", "as_points", "fit_map"), "mixture.fit"),
    **dict.fromkeys(
        (
            "FitMetadata",
            "MixtureParams",
            "ModelParams",
            "ParamsError",
            "Priors",
            "data_priors",
            "seed_priors",
        ),
        "mixture.params",
    ),
    **dict.fromkeys(("Point", "PointError", "decode_point", "parse_point"), "mixture.points"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mixture' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


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
