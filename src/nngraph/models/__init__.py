"""Metanetworks that read neural graphs (NG-GNN, NG-T) and the baselines they must beat."""

from nngraph.models.registry import create_model, model_names

__all__ = ["create_model", "model_names"]
