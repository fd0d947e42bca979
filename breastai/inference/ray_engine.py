"""Predict on Ray Data (``breastai predict --engine ray``): the same scoring on an actor pool, for
inputs one machine cannot score in time.

``pip install 'breastai[ray]'``. The driver (the ``predict`` process) expands the inputs, keeps the
journal and runs the writers exactly as a local run does (:func:`breastai.inference.writers.run_predict`);
only the scoring of each input moves: the inputs still to score become a Ray Dataset
(``ray.data.from_items``, one row per input: its position and the pickled item), and
``map_batches`` hands them to a pool of :class:`ScoringActor` s, each of which loads the checkpoint
(and segmenter) once and scores its rows with :meth:`~breastai.inference.predictor.Predictor.iter_inputs`,
the local path's own code. The records, with their maps, come back in input order
(``preserve_order``) and go through the same writers and journal, so ``--resume`` and the output
files are those of a local run, and the probabilities are the same
(``tests/test_predict_ray.py``).

On a cluster, start Ray on its nodes (``ray start --head`` on one, ``ray start --address=HEAD:6379``
on the others, every node with breastai installed and the inputs and checkpoint at the same paths,
e.g. a shared file system) and run ``breastai predict --engine ray --ray-address HEAD:6379
--workers N`` on a node: N actors score at once, each with one GPU (or a share of one) when the
cluster has GPUs and ``--device`` is not ``cpu``. Without ``--ray-address`` a local Ray instance is
started on this machine (its CPUs). Ray schedules the actors; there is no other scheduler.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from breastai.inference.inputs import PredictItem
from breastai.inference.predictor import Predictor
from breastai.inference.records import Maps
from breastai.models.outliner import SegmenterSource

__all__ = ["RayScoring", "ScoringActor", "require_ray"]

log = logging.getLogger("breastai")


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ValueError: Ray (with Ray Data) is not installed; the message says how to install it.
    """
    try:
        import ray
        import ray.data  # noqa: F401 - Ray without its Data library cannot run this engine
    except ImportError as exc:
        raise ValueError(f"--engine ray needs Ray Data: pip install 'breastai[ray]' ({exc})") from None
    return ray


class ScoringActor:
    """One actor of the pool: a :class:`~breastai.inference.predictor.Predictor`, loaded once, scoring
    batches of ``{"position", "item"}`` rows into ``{"position", "results"}`` (each input's pickled
    ``[(record, maps), ...]``, private keys included, for the driver's writers).

    Args:
        checkpoint: the classifier checkpoint's path.
        segmenter: a segmentation checkpoint's path, or None.
        device: where this actor's models run.
        saliency_upsample: how its Grad-CAM maps are drawn (the driver's predictor's setting).
        options: ``saliency``, ``tta`` and ``keep_identifiers`` of the run.
    """

    def __init__(self, checkpoint: str, segmenter: str | None, device: str, saliency_upsample: str,
                 options: dict[str, Any]) -> None:
        self.pred = Predictor.from_checkpoint(checkpoint, device=device, segmenter=segmenter)
        self.pred.set_saliency_upsample(saliency_upsample)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = [(int(p), pickle.loads(item)) for p, item in zip(batch["position"], batch["item"])]
        done = [pickle.dumps(results) for _, results in self.pred.iter_inputs(
            pairs, self.options["saliency"], self.options["tta"], self.options["keep_identifiers"])]
        return {"position": np.asarray(batch["position"]), "results": np.array(done, dtype=object)}


class RayScoring:
    """The scoring engine of ``run_predict(..., engine=RayScoring(...))``: each input still to score is
    scored by a pool of Ray actors; ``(position, [(record, maps), ...])`` come back in input order.

    Args:
        checkpoint: the classifier checkpoint's path (every actor loads it; a cluster's nodes must see it).
        segmenter: a segmentation checkpoint's path, or None (a pipeline checkpoint brings its own).
        device: ``cpu``, or ``auto``/``cuda``: actors get GPUs when the cluster has them.
        address: the Ray cluster's address (``HOST:6379`` or ``auto``); None starts a local instance.
        batch_size: inputs per actor call (default 1: a mammogram's maps are large).

    Raises:
        ValueError: Ray Data is not installed.
    """

    def __init__(self, checkpoint: str | Path, segmenter: SegmenterSource | None = None, device: str = "auto",
                 address: str | None = None, batch_size: int = 1) -> None:
        self.ray = require_ray()
        if segmenter is not None and not isinstance(segmenter, (str, Path)):
            raise ValueError("--engine ray: give the segmenter as a checkpoint path (every actor loads it)")
        self.checkpoint, self.segmenter = str(checkpoint), None if segmenter is None else str(segmenter)
        self.device, self.address, self.batch_size = device, address, batch_size

    def _connect(self) -> None:
        if self.ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.address is None:  # a local instance: its workers import this very breastai
            here = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        self.ray.init(address=self.address, **kwargs)

    def __call__(self, pred: Predictor, pairs: Sequence[tuple[int, PredictItem]], saliency: str, tta: int,
                 keep_identifiers: bool, workers: int) -> Iterator[tuple[int, list[tuple[dict[str, Any], Maps | None]]]]:
        """Score ``pairs`` on ``max(workers, 1)`` actors (see the class docstring)."""
        if not pairs:
            return
        self._connect()
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the records' order is the inputs'
        ctx.enable_progress_bars = False
        actors = max(1, int(workers))
        gpus = float(self.ray.cluster_resources().get("GPU", 0)) if self.device != "cpu" else 0.0
        ds = ray.data.from_items([{"position": p, "item": pickle.dumps(item)} for p, item in pairs])
        ds = ds.map_batches(ScoringActor, batch_size=self.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            num_gpus=min(1.0, gpus / actors) if gpus else 0,
                            fn_constructor_kwargs={
                                "checkpoint": self.checkpoint, "segmenter": self.segmenter,
                                "device": "cuda" if gpus else "cpu", "saliency_upsample": pred.saliency_upsample,
                                "options": {"saliency": saliency, "tta": tta, "keep_identifiers": keep_identifiers}})
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for position, results in zip(batch["position"], batch["results"]):
                yield int(position), pickle.loads(results)
