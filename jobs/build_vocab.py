"""Build vocabularies and numeric statistics.

    spark-submit jobs/build_vocab.py --conf conf/base.yaml --conf conf/adult.yaml [--set k=v …]

A thin entry point: all logic lives in :mod:`embedlib.spark.vocab`.
"""

import sys

from embedlib.cli import entry

main = entry("vocab")

if __name__ == "__main__":
    sys.exit(main())
