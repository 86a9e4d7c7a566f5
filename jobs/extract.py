"""embedlib extract as a spark-submit / Databricks entry point.

    spark-submit jobs/extract.py --conf conf/base.yaml --conf conf/adult.yaml [--set key=value …]

A thin entry point: all logic lives in the embedlib package.
"""

import sys

from embedlib.cli import entry

main = entry("extract")

if __name__ == "__main__":
    sys.exit(main())
