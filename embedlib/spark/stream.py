"""Streaming scoring: ``embedlib score --stream``, exactly once into Delta.

Structured Streaming over ``score.source`` — a Delta table (through the Spark
connector) or a folder of Parquet/CSV files — with ``foreachBatch``: each
micro-batch is scored by the batch job's own code (:func:`embedlib.spark.score.score_into`:
the same ``mapInArrow`` body) and written as **one Delta commit whose app
transaction is** ``("embedlib-score-stream:<query id>", <batch id>)``, its summary
row to ``score_runs`` with the same transaction. The query id is kept in the
checkpoint, so a query restarted from it after a crash re-runs an unfinished
micro-batch under the same id and version: a commit that already landed is
skipped (both Delta engines check the version before writing), nothing is lost
and nothing is written twice.

``score.stream.trigger``: ``availableNow`` scores every row that arrived since
the previous run and stops (a scheduled catch-up job); an interval runs until
the process is stopped. The checkpoint defaults to one folder per (source,
output) under the run's ``_work``.

A file source's schema is taken from the files present when the query starts
(or ``source.schema``). Each micro-batch's new files are checked before anything
is written: a file that lacks a modelled or id column, or holds one with another
type, stops the query naming the column and the file — Spark would otherwise
read a missing column as nulls. A Delta source stops on a schema change itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from embedlib.core.layout import filesystem, join, read_text
from embedlib.core.output import output_names
from embedlib.core.summary import ScoreRun
from embedlib.core.vocab.model import SchemaError
from embedlib.spark.runs import read_summaries
from embedlib.spark.score import Scoring, prepare_scoring, score_into
from embedlib.spark.tables import TableError, Tables
from embedlib.spark.workers import check_source, passthrough_columns

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery
    from pyspark.sql.types import StructType

    from embedlib.core.config import Config, SourceConfig

__all__ = ["APP_PREFIX", "MicroBatch", "ScoreStream", "checkpoint_of", "run_score_stream", "start_score_stream",
           "summaries_of"]

log = logging.getLogger(__name__)

#: The app id of a stream's Delta commits is ``APP_PREFIX + <query id>``; the version is the batch id.
APP_PREFIX = "embedlib-score-stream:"


@dataclass
class ScoreStream:
    """A running scoring query: the summaries of its micro-batches so far, and the first error of one.

    The summaries are read back from ``score_runs`` (each micro-batch writes its own row there in its
    commit): the same on a classic session, where micro-batches run in this process, and over Spark
    Connect, where they run in a Python process of the server."""

    query: StreamingQuery
    checkpoint: str
    tables: Tables
    score_runs: str
    #: batches of this query id up to this one were scored before this start
    done_before: int
    #: a micro-batch's own exception (a classic session runs them here); over Connect the query's
    errors: list[BaseException] = field(default_factory=list)

    @property
    def runs(self) -> list[ScoreRun]:
        """The micro-batches with rows this start ran (the query's ``recentProgress``: its last 100,
        ``spark.sql.streaming.numRecentProgressUpdates``), in batch order; a batch that an earlier
        start had already written (its commit skipped) has ``written`` false."""
        batches = sorted({int(p.batchId) for p in self.query.recentProgress if int(p.numInputRows) > 0})
        if not batches:
            return []
        done = dict(summaries_of(self.tables, self.score_runs, str(self.query.id)))
        return [replace(done[b], written=b > self.done_before) for b in batches if b in done]

    @property
    def error(self) -> BaseException | None:
        return self.errors[0] if self.errors else None

    def wait(self, timeout: int | None = None) -> list[ScoreRun]:
        """Wait until the query stops (``availableNow``: when it has caught up), or ``timeout``
        seconds; a micro-batch's own error is raised as itself (a bad file names its column)."""
        try:
            self.query.awaitTermination(timeout)
        except Exception:
            if self.error is not None:
                raise self.error from None
            raise
        if self.error is not None:
            raise self.error
        return self.runs


def summaries_of(tables: Tables, score_runs: str, query_id: str) -> list[tuple[int, ScoreRun]]:
    """``(batch id, summary)`` of every micro-batch of query ``query_id`` in ``score_runs``, in batch order."""
    prefix = f"stream-{query_id}-"
    found = read_summaries(tables, score_runs, prefix)
    return sorted(((int(run.run_id[len(prefix):]), run) for run in found), key=lambda item: item[0])


@dataclass(frozen=True)
class MicroBatch:
    """The ``foreachBatch`` function of a scoring stream: checks the batch's new files, then scores it
    with the batch job's :func:`~embedlib.spark.score.score_into` under the transaction of its query and batch
    ids. Self-contained (Spark Connect pickles it to a Python process of the server); on a classic
    session it runs in this process and keeps its exception in ``errors`` for :meth:`ScoreStream.wait`."""

    cfg: Config
    scoring: Scoring
    ids: tuple[str, ...]
    checkpoint: str
    files: bool
    schema: StructType
    wanted: tuple[str, ...]
    errors: list[BaseException]

    def __call__(self, frame: DataFrame, batch_id: int) -> None:
        try:
            started = time.perf_counter()
            query_id = query_id_of(self.checkpoint)
            if self.files:
                check_batch_files(self.checkpoint, batch_id, self.schema, self.wanted, self.scoring.source)
            if frame.isEmpty():
                return
            score_into(frame.sparkSession, self.cfg, self.scoring, frame, self.ids, f"stream-{query_id}-{batch_id}",
                       (APP_PREFIX + query_id, int(batch_id)), started)
        except BaseException as exc:
            if not self.errors:
                self.errors.append(exc)
            raise


def checkpoint_of(cfg: Config, source: SourceConfig) -> str:
    """``score.stream.checkpoint``, or a folder under the run's ``_work`` named by the source and
    the output (a query's offsets belong to one source and one output)."""
    if cfg.score.stream.checkpoint is not None:
        return cfg.score.stream.checkpoint
    key = hashlib.sha256(json.dumps([source.name, source.format, cfg.scores_output]).encode()).hexdigest()[:16]
    return join(cfg.layout.work, "score-stream", key)


def run_score_stream(spark: SparkSession, cfg: Config) -> list[ScoreRun]:
    """``embedlib score --stream``: start the query and wait for it (see :func:`start_score_stream`)."""
    stream = start_score_stream(spark, cfg)
    runs = stream.wait()
    log.info("stream stopped: %d micro-batch(es), %d rows scored into %s (checkpoint %s)", len(runs),
             sum(r.rows for r in runs), cfg.scores_output, stream.checkpoint)
    return runs


def start_score_stream(spark: SparkSession, cfg: Config) -> ScoreStream:
    """Check everything a batch run checks, then start the streaming query over ``score.source``."""
    if cfg.score.mode != "append":
        raise TableError(f"score.mode={cfg.score.mode}: a stream appends each micro-batch; set score.mode=append")
    if cfg.score.run_id is not None:
        raise TableError("score.run_id names one batch run; a stream's micro-batches are named by their query "
                         "and batch ids: unset score.run_id")
    scoring = prepare_scoring(spark, cfg)
    source, tables = scoring.source, scoring.tables(spark)
    df = read_stream(tables, source, cfg.score.stream.max_files_per_trigger)
    ids = passthrough_columns(cfg.score.passthrough, cfg.columns.id, df.columns, output_names(), "score.passthrough")
    check_source(df, scoring.bundle, ids, source.name)
    checkpoint = checkpoint_of(cfg, source)
    files = source.table is None and source.format != "delta"
    errors: list[BaseException] = []
    body = MicroBatch(cfg, scoring, ids, checkpoint, files, df.schema, (*scoring.bundle.spec.columns, *ids), errors)
    done_before = _last_scored_batch(tables, cfg.layout.score_runs, checkpoint)
    trigger: dict[str, Any] = (
        {"availableNow": True} if cfg.score.stream.trigger == "availableNow"
        else {"processingTime": cfg.score.stream.trigger}
    )
    writer = (df.writeStream.foreachBatch(body).option("checkpointLocation", checkpoint)
              .queryName(f"embedlib-score-{cfg.name}").trigger(**trigger))
    stream = ScoreStream(query=_start(writer, scoring, checkpoint), checkpoint=checkpoint, tables=tables,
                         score_runs=cfg.layout.score_runs, done_before=done_before, errors=errors)
    log.info("streaming %s into %s (trigger %s, checkpoint %s, query %s)", source.name, cfg.scores_output,
             cfg.score.stream.trigger, checkpoint, stream.query.id)
    return stream


def _last_scored_batch(tables: Tables, score_runs: str, checkpoint: str) -> int:
    """The last batch of the checkpoint's query already in ``score_runs`` (-1: none, or a new query)."""
    if read_text(join(checkpoint, "metadata")) is None:
        return -1
    done = summaries_of(tables, score_runs, query_id_of(checkpoint))
    return done[-1][0] if done else -1


def _start(writer: Any, scoring: Scoring, checkpoint: str) -> StreamingQuery:
    try:
        return writer.start()
    except Exception as exc:
        raise TableError(f"the scoring stream over {scoring.source.name} (checkpoint {checkpoint}) did not start: "
                         f"{str(exc).splitlines()[0]}") from exc


# ----------------------------------------------------------------------------- sources


def read_stream(tables: Tables, source: SourceConfig, max_files: int | None) -> DataFrame:
    """``score.source`` as a streaming DataFrame: a Delta table through the connector, or a folder of
    Parquet/CSV files whose schema is the files' present one (or ``source.schema``)."""
    from embedlib.spark.tables import reader_options

    reader = tables.spark.readStream
    if max_files is not None:
        reader = reader.option("maxFilesPerTrigger", str(max_files))
    if source.table is not None:
        tables.require_connector(source.table, "streaming from catalog table")
        return reader.table(source.table)
    assert source.path is not None
    if source.format == "delta":
        tables.require_connector(source.path, "streaming from Delta table")
        return reader.format("delta").load(source.path)
    try:
        schema = tables.read_source(source).schema  # the files present now (or source.schema)
    except Exception as exc:
        raise TableError(f"stream source {source.path}: its schema is read from the files present when the "
                         f"stream starts, and none could be read ({str(exc).splitlines()[0]}); add a file "
                         "first or set source.schema") from exc
    return reader.format(source.format).options(**reader_options(source.format, source.options)).schema(
        schema).load(source.path)


def query_id_of(checkpoint: str) -> str:
    """The id of the query whose checkpoint this is (kept across restarts: ``<checkpoint>/metadata``,
    written before the first micro-batch), read the same way on a classic session and over Connect."""
    text = read_text(join(checkpoint, "metadata"))
    query_id = json.loads(text.splitlines()[0]).get("id") if text else None
    if not query_id:
        raise RuntimeError(f"no query id in {join(checkpoint, 'metadata')}: the checkpoint is not a streaming "
                           "query's (give the stream its own score.stream.checkpoint)")
    return str(query_id)


def batch_files(checkpoint: str, batch_id: int) -> list[str]:
    """The files a file source took into micro-batch ``batch_id``, from the query's source log
    (``<checkpoint>/sources/0/<batch>``, or the ``.compact`` file Spark folds every tenth into)."""
    folder = join(checkpoint, "sources", "0")
    text = read_text(join(folder, str(batch_id))) or read_text(join(folder, f"{batch_id}.compact"))
    if text is None:
        raise RuntimeError(f"micro-batch {batch_id}: no file list in {folder}; the checkpoint is not a file "
                           "stream's (give the stream its own score.stream.checkpoint)")
    entries = [json.loads(line) for line in text.splitlines()[1:] if line.strip()]
    return [e["path"] for e in entries if int(e.get("batchId", -1)) == batch_id]


def check_batch_files(checkpoint: str, batch_id: int, schema: StructType, wanted: tuple[str, ...],
                      source: SourceConfig) -> None:
    """Each new file of the micro-batch holds every column in ``wanted`` with the stream's type
    (Parquet: from its footer; CSV with a header: by name) — else the query stops before writing."""
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_type

    types = {f.name: f.dataType for f in schema.fields}
    for path in batch_files(checkpoint, batch_id):
        fs, inner = filesystem(path)
        if source.format == "parquet":
            with fs.open_input_file(inner) as handle:
                have = {f.name: f.type for f in pq.read_schema(handle)}
            missing = [c for c in wanted if c not in have]
            changed = [(c, from_arrow_type(have[c]).simpleString(), types[c].simpleString())
                       for c in wanted if c in have and c in types and from_arrow_type(have[c]) != types[c]]
        elif str(source.options.get("header", "false")).lower() == "true":
            with fs.open_input_stream(inner) as handle:
                first = handle.read(1 << 20).decode("utf-8", "replace").splitlines()[:1]
            sep = str(source.options.get("sep", source.options.get("delimiter", ",")))
            names = [n.strip().strip('"') for n in first[0].split(sep)] if first else []
            missing, changed = [c for c in wanted if c not in names], []
        else:  # headerless CSV: columns by position, typed by source.schema (FAILFAST stops a bad value)
            continue
        if missing:
            raise SchemaError(f"stream source {source.name}: new file {path} lacks column(s) {', '.join(missing)} "
                              f"(micro-batch {batch_id}); nothing of this batch was written — rewrite that file in "
                              "place with the stream's columns and restart: the micro-batch is retried with the "
                              "same files")
        if changed:
            c, now, was = changed[0]
            raise SchemaError(f"stream source {source.name}: column '{c}' of new file {path} is {now}, the stream "
                              f"reads it as {was} (micro-batch {batch_id}); nothing of this batch was written — "
                              "rewrite that file in place with the stream's type and restart: the micro-batch is "
                              "retried with the same files")
