"""Tasks: what a metanetwork's head outputs, the loss, the metrics, reports and figures.

``TASKS`` maps a task name to its class; :func:`create_task` builds one from a dataset
through the class's ``from_dataset`` (the number of classes, the image size and SIREN
frequency are read off the corpus).
"""

from __future__ import annotations

from typing import Any

from nngraph.errors import NNGraphError
from nngraph.tasks.base import Task
from nngraph.tasks.classify import ClassifyTask
from nngraph.tasks.dilate import DilateTask, corpus_dilation_floor, dilate_images, dilation_floor
from nngraph.tasks.generalize import GeneralizeTask, kendall_tau, r2_score
from nngraph.tasks.regress import RegressTask
from nngraph.tasks.render import render_sirens

TASKS: dict[str, type[Task]] = {"classify": ClassifyTask, "dilate": DilateTask, "generalize": GeneralizeTask,
                                "regress": RegressTask}


def create_task(name: str, dataset=None, **kwargs: Any) -> Task:
    """Build task ``name`` for ``dataset`` (a corpus split, ``data.corpus``); ``kwargs`` override.

    classify: ``num_classes`` from the labels; dilate: image size, w0 and offset from the
    corpus; generalize: ``loss`` ("bce" or "mse"); regress: the targets' mean and std.
    """
    if name not in TASKS:
        raise NNGraphError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    cls = TASKS[name]
    if dataset is not None:
        cls.check_corpus(dataset)
    return cls.from_dataset(dataset, **kwargs)


__all__ = ["TASKS", "Task", "ClassifyTask", "DilateTask", "GeneralizeTask", "RegressTask", "create_task", "dilate_images",
           "corpus_dilation_floor", "dilation_floor", "kendall_tau", "r2_score", "render_sirens"]
