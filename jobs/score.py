"""embedlib score as a spark-submit / Databricks entry point.

    spark-submit jobs/score.py --conf conf/base.yaml --conf conf/adult.yaml [--set key=value …]

A thin entry point: all logic lives in the embedlib package.
"""

import sys

from embedlib.cli import entry

main = entry("score")

if __name__ == "__main__":
    sys.exit(main())
