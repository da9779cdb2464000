"""How unlike the training crops a crop is, in the model's own features: the node refuses what is too far.

The pooled features the linear head reads, of the training crops, model one Gaussian per KL grade with a shared
covariance (shrunk a little towards its mean variance, so that it inverts stably).  A crop's distance is the
smallest Mahalanobis distance to a grade's mean.  The threshold is MARGIN times the 99th percentile of the val
crops' distances: the margin is there because the crops are one dataset's processing, and other sites' films (8-bit
exports, other pixel sizes and display curves) sit further out while still being knees the model grades well.
Turned knees and other body parts lie well beyond it (figures in the model card).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PREFIX = "familiarity."  # their keys in the weights file, beside the network's
SHRINKAGE = 0.01
QUANTILE, MARGIN = 0.99, 1.3


@dataclass(frozen=True)
class Familiarity:
    means: np.ndarray  # (grades, channels)
    precision: np.ndarray  # (channels, channels): inverse of the shared covariance

    @classmethod
    def fit(cls, features: np.ndarray, grades: np.ndarray) -> Familiarity:
        features = features.astype(np.float64)
        means = np.stack([features[grades == grade].mean(0) for grade in np.unique(grades)])
        centred = features - means[np.searchsorted(np.unique(grades), grades)]
        covariance = centred.T @ centred / len(features)
        covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(
            len(covariance))
        return cls(means.astype(np.float32), np.linalg.inv(covariance).astype(np.float32))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) smallest Mahalanobis distance of each crop's features to a grade's mean."""
        differences = features[:, None, :] - self.means[None]
        # A matrix product (BLAS), then the row sums: a three-operand einsum loops in numpy, 5 ms per crop.
        squared = ((differences @ self.precision) * differences).sum(-1)
        return np.sqrt(np.maximum(squared, 0).min(1))

    def threshold(self, val_features: np.ndarray) -> float:
        return float(MARGIN * np.quantile(self.distance(val_features), QUANTILE))

    def tensors(self) -> dict[str, torch.Tensor]:
        # fp32: the precision matrix's range does not survive fp16.
        return {f"{PREFIX}means": torch.from_numpy(self.means), f"{PREFIX}precision": torch.from_numpy(self.precision)}

    @classmethod
    def from_tensors(cls, state: dict[str, torch.Tensor]) -> Familiarity:
        return cls(state[f"{PREFIX}means"].float().numpy(), state[f"{PREFIX}precision"].float().numpy())
