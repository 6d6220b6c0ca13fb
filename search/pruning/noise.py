"""The measurement noise of a validation accuracy, which the collapse rules must exceed.

An accuracy p measured on n validation images is a binomial proportion: its standard error is
sqrt(p(1-p)/n), and the difference of two such accuracies has sqrt(p1(1-p1)/n + p2(1-p2)/n). `Noise`
gives z of those standard errors as a half-width in accuracy units; `search.pruning.collapse` says
which comparisons use it, and why the two epochs are treated as independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    """Measurement noise of validation accuracies on `images` images (None: not known)."""

    images: int | None
    z: float

    def _variance(self, accuracy: float) -> float:
        if not self.images:
            return 0.0
        # (k + 1) / (n + 2): a measured 0% or 100% is still uncertain.
        smoothed = (accuracy * self.images + 1.0) / (self.images + 2.0)
        return smoothed * (1.0 - smoothed) / self.images

    def of_difference(self, first: float, second: float) -> float:
        """Half-width of the noise band of `first - second`: z standard errors."""
        return self.z * math.sqrt(self._variance(first) + self._variance(second))

    def of_accuracy(self, accuracy: float) -> float:
        return self.z * math.sqrt(self._variance(accuracy))

    @property
    def known(self) -> bool:
        return bool(self.images)

    def describe(self, band: float) -> str:
        return f"noise ±{100 * band:.1f} pts" if self.known else "noise unknown"
