"""Encode: the Spark shards and the Arrow encoder give identical values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedlib.core.config import load_config
from embedlib.core.encode import Encoded, EncodeError, Encoder, ShardSet, read_shards
from embedlib.spark.train.job import encode_to_shards
from embedlib.spark.vocab import build_vocabulary

from .conftest import ADULT_DATA, adult_pandas, tables_of, train_cfg


def rows_of(enc: Encoded) -> np.ndarray:
    """Rows as one float matrix, sorted, so two encodings compare as multisets."""
    mat = np.hstack([enc.cat.astype(np.float64), enc.num.astype(np.float64), enc.missing.astype(np.float64)])
    return mat[np.lexsort(mat.T[::-1])]


def concat(parts: list[Encoded]) -> Encoded:
    return Encoded(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("cat", "num", "missing")))


def test_spark_shards_equal_arrow_encoder_on_adult(spark, adult_trained) -> None:  # type: ignore[no-untyped-def]
    import json

    from embedlib.core.layout import read_text

    cfg, result = adult_trained
    from embedlib.core.bundle import load_bundle

    encoder = load_bundle(result.bundle_path).encoder
    shards = ShardSet.from_dict(json.loads(read_text(f"{cfg.layout.work}/encoded/_shards.json") or "{}"))
    spark_side = concat(list(read_shards(shards.train_files + shards.valid_files, encoder)))
    arrow_side = encoder.arrays(pa.Table.from_pandas(adult_pandas(ADULT_DATA), preserve_index=False))
    assert spark_side.cat.dtype == np.int64 and spark_side.num.dtype == np.float32
    np.testing.assert_array_equal(rows_of(spark_side), rows_of(arrow_side))
    # nulls ('?') went to index 0 and the singleton country to the OOV index 1
    pdf = adult_pandas(ADULT_DATA)
    wc = list(encoder.categorical).index("workclass")
    assert (arrow_side.cat[:, wc] == 0).sum() == pdf["workclass"].isna().sum() == 1836
    nc = list(encoder.categorical).index("native-country")
    assert (arrow_side.cat[:, nc] == 1).sum() == 1


def test_numeric_rules(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([(1.0, 10.0), (3.0, None), (None, 0.0), (float("nan"), 1000.0)], "a DOUBLE, b DOUBLE")
    cfg = load_config([], [f"output_dir={tmp_path}", "source.path=x", "columns.numeric=[a, b]",
                           "columns.log1p=[b]"])
    vocab = build_vocabulary(spark, df, cfg, source="t")
    enc = Encoder.for_vocab(vocab).arrays(df.toArrow())
    sa = vocab.numeric["a"]
    assert sa.mean == 2.0 and sa.std == 1.0
    np.testing.assert_allclose(enc.num[:, 0], [-1.0, 1.0, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(enc.missing[:, 0], [0, 0, 1, 1])
    logb = np.log1p([10.0, 0.0, 1000.0])
    np.testing.assert_allclose(enc.num[[0, 2, 3], 1], (logb - logb.mean()) / logb.std(), rtol=1e-5)
    np.testing.assert_array_equal(enc.missing[:, 1], [0, 1, 0, 0])
    with pytest.raises(EncodeError, match="numeric column 'a' has 1 infinite value"):
        Encoder.for_vocab(vocab).arrays(pa.table({"a": [float("inf")], "b": [1.0]}))
    with pytest.raises(EncodeError, match="column 'b' is missing from the data"):
        Encoder.for_vocab(vocab).arrays(pa.table({"a": [1.0]}))
    with pytest.raises(EncodeError, match="numeric column 'a' holds values that are not numbers"):
        Encoder.for_vocab(vocab).arrays(pa.table({"a": ["x"], "b": [1.0]}))


@pytest.mark.parametrize(("setting", "low", "high"), [("train.sample_fraction=0.25", 7500, 8800),
                                                      ("train.max_rows=5000", 5000, 5000)])
def test_sampling_is_deterministic(spark, adult_trained, tmp_path: Path, setting: str, low: int, high: int) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    from embedlib.spark.vocab import load_vocabulary

    vocab = load_vocabulary(tables_of(spark), cfg.layout.vocab)
    runs = []
    for name in ("a", "b"):
        run = train_cfg(tmp_path / name, setting, f"source.path={ADULT_DATA}")
        runs.append(encode_to_shards(spark, tables_of(spark).read_source(run.source), vocab, run))
    a, b = runs
    assert low <= a.train_rows + a.valid_rows <= high
    assert (a.train_rows, a.valid_rows) == (b.train_rows, b.valid_rows)
    encoder = Encoder.for_vocab(vocab)
    for fa, fb in zip(a.train_files, b.train_files):
        np.testing.assert_array_equal(rows_of(concat(list(read_shards([fa], encoder)))),
                                      rows_of(concat(list(read_shards([fb], encoder)))))
