"""Measuring detection quality on real rows: planted anomalies.

:func:`plant_anomalies` follows the protocol of the shipped data's README: in a
``fraction`` of the rows, two fields (chosen at random among the declared
columns) take the values of another random row whose values differ in both.
That breaks the dependencies between columns while keeping every column's
distribution, so a detector can only find these rows through the joint structure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["plant_anomalies"]


def plant_anomalies(
    frame: pd.DataFrame, columns: Sequence[str], *, fraction: float = 0.02, fields: int = 2, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """A copy of ``frame`` with planted anomalies, and the 0/1 label of every row."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if len(columns) < fields:
        raise ValueError(f"need at least {fields} columns to plant anomalies, got {list(columns)}")
    rng = np.random.default_rng(seed)
    out = frame.copy()
    n = len(out)
    targets = rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)
    labels = np.zeros(n, dtype=np.int8)
    cols = list(columns)
    for row in targets:
        for _ in range(100):  # find a donor whose values differ in both chosen fields
            chosen = rng.choice(len(cols), size=fields, replace=False)
            donor = int(rng.integers(n))
            names = [cols[c] for c in chosen]
            mine = [frame.iloc[row][c] for c in names]
            theirs = [frame.iloc[donor][c] for c in names]
            if all(not _same(a, b) for a, b in zip(mine, theirs)):
                for c, value in zip(names, theirs):
                    out.iat[row, out.columns.get_loc(c)] = value
                labels[row] = 1
                break
    return out, labels


def _same(a: object, b: object) -> bool:
    if pd.isna(a) and pd.isna(b):  # type: ignore[arg-type]
        return True
    return bool(a == b)
