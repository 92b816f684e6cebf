"""Batched, differentiable rendering of many SIRENs at once: :func:`nngraph.data.inr.render_sirens`
(it lives in the data layer, which renders imported INRs too; re-exported here for the tasks)."""

from nngraph.data.inr import render_sirens, siren_depth

__all__ = ["render_sirens", "siren_depth"]
