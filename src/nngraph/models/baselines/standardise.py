"""Feature standardisation with training statistics, shared by the feature-based baselines.

f -> (f - mean) / std per feature, mean and std measured once on training data (a
feature whose std is ~ 0 is left unscaled); kept as buffers ``feat_mean`` / ``feat_std``
so they travel with the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_STD = 1e-6  # below this a feature counts as constant and is only centred


class Standardised(nn.Module):
    """Base of a model that standardises its input features [*, dim]."""

    def init_standardisation(self, dim: int) -> None:
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))

    @torch.no_grad()
    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """f -> (f - mean) / std, per feature (std ~ 0 -> 1)."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(torch.where(std > MIN_STD, std, torch.ones_like(std)))

    @torch.no_grad()
    def fit_normalisation(self, features: torch.Tensor) -> None:
        """Mean and (population) std of training features [M, dim]."""
        self.set_normalisation(features.mean(0), features.std(0, unbiased=False))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feat_mean) / self.feat_std
