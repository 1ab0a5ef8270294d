"""The model being served, swapped atomically between batches.

A model is installed by building (or reusing) the classifier for its layout (K, D, scale),
compiling every padding size, putting its parameters on the device, and only then replacing
`current` in one assignment. All of that runs on the compile thread, never the inference
thread, so a new layout compiles while the current model keeps serving. A batch reads `current`
once, so it is classified by one model from start to end; a new version of a known layout never
recompiles. A model that cannot be compiled or prepared is rejected and counted
(`gmm_params_rejected_total{reason="compile_failed"}`); the current one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import NamedTuple

from mixture.classify import Classifier, Prepared, classifier_for
from mixture.params import ModelParams
from stream_app.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class ServingModel(NamedTuple):
    model: ModelParams
    classifier: Classifier
    device_params: Prepared


class ModelHolder:
    """Holds the current ServingModel; `ready` is set once the first one is installed.

    served=False holds a candidate in shadow instead: it is compiled and prepared the same way
    (sharing `classifiers` with the served holder, so a candidate of the served layout compiles
    nothing) but touches neither readiness nor the served model's metrics, and `clear()`
    withdraws it.
    """

    def __init__(
        self,
        temperature: int,
        max_batch: int,
        metrics: WorkerMetrics,
        compile_executor: Executor,
        sizes: tuple[int, ...] | None = None,
        served: bool = True,
        classifiers: dict[tuple[int, int, str], Classifier] | None = None,
    ) -> None:
        self.temperature = temperature
        self.max_batch = max_batch
        #: Padding sizes of every classifier; None: the backend's, up to max_batch.
        self.sizes = sizes
        self.metrics = metrics
        self.executor = compile_executor
        self.current: ServingModel | None = None
        self.ready = asyncio.Event()
        self.served = served
        self._classifiers: dict[tuple[int, int, str], Classifier] = (
            {} if classifiers is None else classifiers
        )
        self._compilations_counted = 0

    async def install(self, model: ModelParams) -> bool:
        """Serves `model` from the next batch on; False if it is not newer than the current one."""
        current = self.current
        if self.served and current is not None and model.version <= current.model.version:
            log.info(
                "not installing model version %d: serving %d", model.version, current.model.version
            )
            return False
        m = model.mixture
        shape = (m.n_components, m.dim, m.layout)
        loop = asyncio.get_running_loop()
        classifier = self._classifiers.get(shape)
        try:
            if classifier is None:
                log.info("compiling the classifier for K=%d D=%d (%s scale)", *shape)
                classifier = classifier_for(
                    m, temperature=self.temperature, max_batch=self.max_batch, sizes=self.sizes
                )
                await loop.run_in_executor(self.executor, classifier.warmup)
                self._classifiers[shape] = classifier
            device_params = await loop.run_in_executor(self.executor, classifier.prepare, m)
        except Exception as exc:  # the model is bad for this worker, not the worker itself
            log.error("rejecting model version %d: it cannot be compiled: %s", model.version, exc)
            self.metrics.params_rejected.labels(reason="compile_failed", phase="live").inc()
            return False
        self.current = ServingModel(model, classifier, device_params)
        if not self.served:
            log.info("scoring candidate version %d in shadow", model.version)
            return True
        self.count_compilations()
        self.metrics.model_installed(model)
        self.metrics.ready.set(1)
        self.ready.set()
        log.info("serving model version %d", model.version)
        return True

    def clear(self) -> None:
        """Withdraws the held model (a candidate promoted or rejected)."""
        if self.current is not None:
            log.info("candidate version %d withdrawn", self.current.model.version)
        self.current = None

    @property
    def classifiers(self) -> dict[tuple[int, int, str], Classifier]:
        return self._classifiers

    def count_compilations(self) -> None:
        total = sum(c.compilations for c in self._classifiers.values())
        if total > self._compilations_counted:
            self.metrics.compilations.inc(total - self._compilations_counted)
            self._compilations_counted = total
