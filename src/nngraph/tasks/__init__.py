"""Tasks: what a metanetwork's head outputs, the loss and the metrics.

``TASKS`` maps a task name to its class; :func:`create_task` builds one from a dataset
(the number of classes, the image size and SIREN frequency are read off the corpus).
"""

from __future__ import annotations

from typing import Any

from nngraph.errors import NNGraphError
from nngraph.tasks.base import Task
from nngraph.tasks.classify import ClassifyTask
from nngraph.tasks.dilate import DilateTask, dilate_images, dilation_floor
from nngraph.tasks.generalize import GeneralizeTask, kendall_tau, r2_score
from nngraph.tasks.render import render_sirens

TASKS: dict[str, type[Task]] = {"classify": ClassifyTask, "dilate": DilateTask, "generalize": GeneralizeTask}


def _num_classes(dataset) -> int:
    """Classes of a corpus: 1 + the largest label over *all* splits (a split may miss a class)."""
    manifest = getattr(dataset, "manifest", None)
    if manifest is not None and manifest.get("items", {}).get("label") is not None:
        labels = [int(v) for v in manifest["items"]["label"] if v is not None]
    else:
        labels = [int(v) for v in dataset.labels.tolist()]
    if not labels:
        raise NNGraphError("the corpus has no labels; the classify task needs a labelled INR corpus")
    if min(labels) < 0:
        raise NNGraphError(f"class labels must be >= 0, the corpus has {min(labels)}")
    return max(labels) + 1


def create_task(name: str, dataset=None, **kwargs: Any) -> Task:
    """Build task ``name`` for ``dataset`` (an ``InrDataset`` / ``ZooDataset``); ``kwargs`` override.

    classify: ``num_classes`` from the labels; dilate: image size, w0 and offset from the
    corpus; generalize: ``loss`` ("bce" or "mse").
    """
    if name not in TASKS:
        raise NNGraphError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    kind = getattr(dataset, "kind", None)
    cls = TASKS[name]
    if dataset is not None and kind is not None and kind != cls.corpus:
        raise NNGraphError(f"task {name!r} reads a {cls.corpus!r} corpus, got a {kind!r} corpus; "
                           f"build one with `nngraph data {'inrs' if cls.corpus == 'inr' else 'zoo'}`")
    if name == "classify":
        if "num_classes" not in kwargs:
            if dataset is None:
                raise NNGraphError("the classify task needs a dataset or num_classes")
            kwargs["num_classes"] = _num_classes(dataset)
        return ClassifyTask(**kwargs)
    if name == "dilate":
        if dataset is None:
            return DilateTask(**kwargs)
        return DilateTask.from_dataset(dataset, **kwargs)
    return GeneralizeTask(**kwargs)


__all__ = ["TASKS", "Task", "ClassifyTask", "DilateTask", "GeneralizeTask", "create_task", "dilate_images",
           "dilation_floor", "kendall_tau", "r2_score", "render_sirens"]
