"""embedlib evaluate as a spark-submit / Databricks entry point.

    spark-submit jobs/evaluate.py --conf conf/base.yaml --conf conf/adult.yaml --plant 0.02 [--baselines]
    spark-submit jobs/evaluate.py --conf … --labels PATH --label-column NAME [--positive VALUE]

A thin entry point: all logic lives in the embedlib package.
"""

import sys

from embedlib.cli import entry

main = entry("evaluate")

if __name__ == "__main__":
    sys.exit(main())
