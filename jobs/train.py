"""Encode the source and train the embedding autoencoder; write the model bundle.

    spark-submit jobs/train.py --conf conf/base.yaml --conf conf/adult.yaml [--set train.backend=torch_distributor]

A thin entry point: all logic lives in :mod:`embedlib.spark.train`.
"""

import sys

from embedlib.cli import entry

main = entry("train")

if __name__ == "__main__":
    sys.exit(main())
