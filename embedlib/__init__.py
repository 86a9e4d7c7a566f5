"""embedlib: embeddings for categorical columns and anomaly scores for large tables.

The library is cut into small modules, one responsibility each; the README's
"Architecture" section is the map (what each module owns and may import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedlib.inmemory import fit

from embedlib.core.version import __version__

__all__ = ["__version__", "fit"]


def __getattr__(name: str) -> Any:
    """``embedlib.fit`` (:func:`embedlib.inmemory.fit`), imported when first used: ``import embedlib``
    stays light for the jobs and the workers."""
    if name == "fit":
        from embedlib.inmemory import fit

        return fit
    raise AttributeError(f"module 'embedlib' has no attribute {name!r}")
