#!/usr/bin/env bash
# Fetch the JVM jars embedlib's local sessions load, once, into a cache outside the repository:
#   <cache>/delta-spark_<spark>_2.13-<delta>/   the Delta Spark connector (+ its runtime deps)
#   <cache>/hadoop-aws-<hadoop>/                 s3a:// (hadoop-aws + the AWS SDK bundle)
# <cache> is $EMBEDLIB_JARS, else ~/.cache/embedlib/jars. The Spark and Hadoop versions are
# read off the installed pyspark; the Delta version is embedlib.spark.session.DELTA_VERSION (pinned with it).
# Jars pyspark already ships (any version) are left out, so the classpath has one of each.
set -euo pipefail
PY="${1:?usage: fetch_jars.sh PYTHON}"
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${EMBEDLIB_JARS:-$HOME/.cache/embedlib/jars}"
read -r SPARK_BIN SPARK_JARS HADOOP DELTA < <("$PY" - <<'PYEOF'
import glob, os, re, pyspark
from embedlib.spark.session import DELTA_VERSION
jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
hadoop = [re.search(r"hadoop-client-api-(.+)\.jar$", p).group(1) for p in glob.glob(jars + "/hadoop-client-api-*.jar")]
print(".".join(pyspark.__version__.split(".")[:2]), jars, hadoop[0] if hadoop else "3.4.1", DELTA_VERSION)
PYEOF
)
[ -n "${DELTA:-}" ] || { echo "fetch_jars: could not read the pyspark and Delta versions with $PY" >&2; exit 1; }
command -v mvn >/dev/null || { echo "fetch_jars: Maven (mvn) is needed to fetch the Delta connector jars" >&2; exit 1; }

fetch() {  # fetch <folder> <profile-args...>
  local dest="$1"; shift
  if [ -f "$dest/.complete" ]; then return 0; fi
  local tmp="$dest.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  mvn -q -B -Dstyle.color=never -f "$HERE/jars/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$tmp" -Dspark.binary="$SPARK_BIN" -Ddelta.version="$DELTA" \
      -Dhadoop.version="$HADOOP" "$@"
  # drop what pyspark ships already (same artifact, any version)
  "$PY" - "$tmp" "$SPARK_JARS" <<'PYEOF'
import os, re, sys
tmp, spark_jars = sys.argv[1], sys.argv[2]
def base(name):
    return re.sub(r"-\d[\w.\-]*\.jar$", "", name)
shipped = {base(n) for n in os.listdir(spark_jars) if n.endswith(".jar")}
for name in os.listdir(tmp):
    if base(name) in shipped:
        os.remove(os.path.join(tmp, name))
PYEOF
  touch "$tmp/.complete"
  rm -rf "$dest"; mv "$tmp" "$dest"
  echo "fetch_jars: $(ls "$dest" | wc -l) jars in $dest"
}
fetch "$CACHE/delta-spark_${SPARK_BIN}_2.13-$DELTA" -P delta
fetch "$CACHE/hadoop-aws-$HADOOP" -P aws
