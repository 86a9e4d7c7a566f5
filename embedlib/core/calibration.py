"""Calibrated contributions: how unusual a column's nats are, against normal rows. numpy only.

A column whose values the rest of the row cannot predict adds several nats to every
row; the signal of a broken dependency is a fraction of a nat on another column,
and drowns in the raw sum. Calibration puts every column on the same scale: for
column ``j`` with contribution ``x`` (nats), the calibrated term is

    c_j(x) = −log S_j(x),   S_j(x) = share of validation rows whose contribution is ≥ x

— the surprise of seeing a contribution this large, in nats, 0 for the most common
contributions and large for rare ones, whatever the column's own entropy. The
terms of a row add up to its calibrated score exactly, as the raw contributions
add up to the NLL.

:class:`Calibration` stores, per column, ``LEVELS`` quantiles of the validation
contributions (at levels ``(i + ½) / LEVELS``) and an exponential tail beyond the
largest: above the top quantile, ``S(x) = S_top · exp(−(x − q_top) / scale)``,
``scale`` being the mean excess over the 0.9 quantile. ``S`` never drops below
``1 / (rows + 1)`` within the sample's range, so a contribution as large as the
largest seen on normal rows scores ``log(rows + 1)``-ish, and larger ones keep growing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LEVELS", "Calibration"]

LEVELS = 256


@dataclass(frozen=True)
class Calibration:
    """Per-column quantiles of validation contributions (``[columns, LEVELS]``) and tail scales."""

    quantiles: np.ndarray  # float64 [columns, LEVELS], ascending per column
    tail_scale: np.ndarray  # float64 [columns]
    rows: int  # validation rows the quantiles summarise

    @classmethod
    def fit(cls, contributions: np.ndarray) -> Calibration:
        """Fit on ``contributions`` ``[rows, columns]`` of normal (validation) rows."""
        x = np.asarray(contributions, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError("calibration needs a [rows, columns] array of at least one row")
        levels = (np.arange(LEVELS) + 0.5) / LEVELS
        # float32 precision: what the bundle's JSON stores is exactly what scoring uses
        quantiles = np.quantile(x, levels, axis=0).T.astype(np.float32).astype(np.float64)
        q90 = np.quantile(x, 0.9, axis=0)
        excess = np.where(x > q90, x - q90, np.nan)
        with np.errstate(invalid="ignore"):
            scale = np.nanmean(excess, axis=0) if np.isfinite(excess).any() else np.ones(x.shape[1])
        scale = np.where(np.isfinite(scale) & (scale > 1e-3), scale, 1e-3)
        scale = np.asarray(scale, dtype=np.float32).astype(np.float64)
        return cls(quantiles=quantiles, tail_scale=scale, rows=int(x.shape[0]))

    def terms(self, contributions: np.ndarray) -> np.ndarray:
        """``−log S_j(x)`` for every cell of ``contributions`` ``[rows, columns]``; rows add up to the score."""
        x = np.asarray(contributions, dtype=np.float64)
        out = np.empty_like(x)
        floor = 1.0 / (self.rows + 1)
        top_share = max(0.5 / LEVELS, floor)
        for j in range(x.shape[1]):
            q = self.quantiles[j]
            below = np.searchsorted(q, x[:, j], side="left")  # quantiles strictly below x
            share = np.maximum(1.0 - below / LEVELS, top_share)
            over = x[:, j] > q[-1]
            share = np.where(over, top_share * np.exp(-(x[:, j] - q[-1]) / self.tail_scale[j]), share)
            out[:, j] = -np.log(np.clip(share, 1e-300, 1.0))
        return out

    def tail_probability(self, contributions: np.ndarray) -> np.ndarray:
        """``S_j(x)``: the share of normal rows whose column ``j`` adds at least this much."""
        return np.exp(-self.terms(contributions))
