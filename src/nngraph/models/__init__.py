"""Metanetworks that read neural graphs (NG-GNN, NG-T) and the baselines they must beat.

Importing the package imports every model module, so each registers itself with
``registry.register_model`` before anyone asks ``create_model`` for it.
"""

from nngraph.models import baselines, gnn, transformer  # noqa: F401 - registration
from nngraph.models.registry import create_model, model_info, model_names, models_with

__all__ = ["create_model", "model_info", "model_names", "models_with"]
