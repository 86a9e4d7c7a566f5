"""embedlib — embeddings for categorical columns and anomaly scores for large tables."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "embedlib" / "__init__.py").read_text().split("__all__")[0], version)

EVALUATE = ["scikit-learn>=1.4", "matplotlib>=3.8"]

setup(
    name="embedlib",
    version=version["__version__"],
    description="Learn embeddings for categorical columns of large tables; score anomalies with Spark.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["embedlib", "embedlib.*"]),
    package_data={"embedlib": ["py.typed"]},
    install_requires=[
        "pyspark>=4.0,<5",
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "numpy>=1.26",
        "deltalake>=1.0",
        "delta-spark>=4.0,<5",
        "torch>=2.6",
        "safetensors>=0.4",
        "PyYAML>=6",
        "tqdm>=4.60",
    ],
    extras_require={
        # `embedlib evaluate` (metrics and plots) and the IsolationForest baseline
        "evaluate": EVALUATE,
        "dev": [
            "pytest>=8", "pytest-timeout>=2.3", "ruff>=0.5", "mypy>=1.10", *EVALUATE,
            # executing the notebooks in tests/test_notebooks.py
            "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.29",
        ],
        "horovod": ["horovod==0.28.1", "cloudpickle", "psutil", "cffi"],
    },
    entry_points={"console_scripts": ["embedlib = embedlib.cli:main"]},
)
