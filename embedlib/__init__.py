"""embedlib: embeddings for categorical columns and anomaly scores for large tables.

The library is cut into small modules, one responsibility each; the README's
"Architecture" section is the map (what each module owns and may import).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
