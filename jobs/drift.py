"""embedlib drift as a spark-submit / Databricks entry point.

    spark-submit jobs/drift.py --conf conf/base.yaml --conf conf/adult.yaml [--set key=value …]

A thin entry point: all logic lives in the embedlib package. Exits 3 when the newest scoring run
drifted past drift.psi_alert.
"""

import sys

from embedlib.cli import entry

main = entry("drift")

if __name__ == "__main__":
    sys.exit(main())
