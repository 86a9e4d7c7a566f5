"""embedlib's version: one place, read by the package root, the bundle's manifest, MLflow and setup.py."""

__version__ = "0.1.0"
