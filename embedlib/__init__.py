"""embedlib: embeddings for categorical columns and anomaly scores for large tables.

The library is cut into small modules (see ``README.md`` and ``ARCHITECTURE``):
``config`` (frozen job configuration), ``layout`` (paths of a run), ``spark``
(session building), ``tables`` (Delta / Parquet / CSV I/O with and without the
Delta connector) and ``vocab`` (vocabularies and numeric statistics).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
