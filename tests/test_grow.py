"""Vocabularies that grow (``embedlib vocab --update``) and models that start from their parent
(``train.warm_start``): indices never move, counts add up, embeddings stay where they were."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlib.core.bundle import load_bundle
from embedlib.core.config import load_config
from embedlib.core.indices import FIRST_INDEX
from embedlib.core.train import TrainError
from embedlib.core.vocab import VocabError
from embedlib.spark.extract import embedding_matrix
from embedlib.spark.train import run_train_job
from embedlib.spark.vocab import load_vocabulary, run_vocab_job

from .conftest import ADULT_CONF, ADULT_DATA, BASE_CONF, adult_pandas, tables_of

log = logging.getLogger(__name__)

#: The countries of the first months' rows; every other one first appears in the new rows.
EARLY = ("United-States", "Mexico", "Philippines", "Germany")
#: Adult's numeric columns but education-num.
FEWER = "[age, fnlwgt, capital-gain, capital-loss, hours-per-week]"
QUICK = ["model.size=small", "train.max_steps=600", "train.seed=7", "train.patience=10"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, pd.DataFrame]:
    """Adult split into the rows seen first (4 countries, 60 % of the rest) and the rows that arrive
    later, as Parquet; and a folder holding both (the union a retrain reads)."""
    frame = adult_pandas(ADULT_DATA)
    rng = np.random.default_rng(0)
    early = frame["native-country"].isin(EARLY) & (rng.random(len(frame)) < 0.6)
    root = tmp_path_factory.mktemp("grow")
    (root / "union").mkdir()
    old, new = root / "union" / "old.parquet", root / "union" / "new.parquet"
    frame[early].to_parquet(old, index=False)
    frame[~early].to_parquet(new, index=False)
    return old, new, root / "union", frame


def config(out: Path, source: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config([BASE_CONF, ADULT_CONF], [f"output_dir={out}", f"source.path={source}",
                                                 "source.format=parquet", "source.options={}", "source.schema=null",
                                                 *QUICK, *extra])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))


@pytest.mark.slow
def test_update_keeps_indices_and_warm_start_keeps_embeddings(spark, tmp_path: Path, parts) -> None:  # type: ignore[no-untyped-def]
    old_file, new_file, union, frame = parts
    first = run_vocab_job(spark, config(tmp_path, old_file))
    parent = run_train_job(spark, config(tmp_path, old_file))
    cfg = config(tmp_path, new_file)
    version = tables_of(spark).version(cfg.layout.vocab)
    grown = run_vocab_job(spark, cfg, update=True)

    # a new version of the table that records what it extends; old indices never move
    assert tables_of(spark).version(cfg.layout.vocab) == version + 1  # type: ignore[operator]
    assert grown.meta["extends"] == {"content_hash": first.content_hash, "version": version}
    assert grown.content_hash != first.content_hash
    assert load_vocabulary(tables_of(spark), cfg.layout.vocab).content_hash == grown.content_hash
    assert grown.meta["row_count"] == len(frame)
    for name in first.categorical:
        before, after = first[name], grown[name]
        assert after.values[: len(before.values)] == before.values
    countries = grown["native-country"]
    added = countries.values[len(first["native-country"].values):]
    assert set(added) and not set(added) & set(EARLY)
    # counts add up: an old value's count is its count over all rows; a new value is numbered when
    # its count in the new rows reaches min_count (2), in count order; the rest went to OOV
    everything = frame["native-country"].value_counts()
    assert dict(zip(countries.values[: len(EARLY)], countries.counts[: len(EARLY)])) == \
        {v: int(everything[v]) for v in countries.values[: len(EARLY)]}
    later = frame.loc[~frame["native-country"].isin(first["native-country"].values), "native-country"].value_counts()
    assert list(added) == [v for v, n in sorted(later.items(), key=lambda vn: (-vn[1], vn[0])) if n >= 2]
    assert countries.null_count == int(frame["native-country"].isna().sum())
    assert sum(countries.counts) + countries.oov_count + countries.null_count == len(frame)
    # numeric statistics pooled over both parts: as computed over all rows at once
    hours = grown.numeric["hours-per-week"]
    assert hours.rows == len(frame) and hours.min == frame["hours-per-week"].min()
    assert hours.mean == pytest.approx(frame["hours-per-week"].mean(), rel=1e-9)
    assert hours.std == pytest.approx(frame["hours-per-week"].std(ddof=0), rel=1e-9)

    # warm start from the parent on the union, against a cold run with the same settings
    warm_cfg = config(tmp_path / "warm", union, f"train.warm_start={parent.bundle_path}")
    # the cold run: the parent's shape from fresh weights of another seed (with the parent's own seed
    # its embeddings stay near the random start they share with the parent's after 600 steps: 0.95)
    shape = load_bundle(parent.bundle_path).spec
    cold_cfg = config(tmp_path / "cold", union, "train.seed=8", f"model.hidden={list(shape.hidden)}",
                      f"model.bottleneck={shape.bottleneck}", f"model.max_embedding_dim={max(shape.embedding_dims)}",
                      f"model.embedding_dims={json.dumps(dict(zip(shape.categorical, shape.embedding_dims)))}")
    for run in (warm_cfg, cold_cfg):  # both train on the updated vocabulary
        shutil.copytree(cfg.layout.vocab, run.layout.vocab)
    warm = run_train_job(spark, warm_cfg)
    cold = run_train_job(spark, cold_cfg)
    assert warm.metrics["parent_bundle_id"] == parent.bundle_id and cold.metrics["parent_bundle_id"] is None
    p, w, c = (load_bundle(r.bundle_path) for r in (parent, warm, cold))
    assert w.spec.embedding_dims == p.spec.embedding_dims and w.spec.hidden == p.spec.hidden
    sims = {}
    for name, b in (("warm", w), ("cold", c)):
        # every value the parent numbered, every column: the mean of the rows' cosines
        sims[name] = float(np.mean(np.concatenate([
            cosine(embedding_matrix(p, col)[FIRST_INDEX: p.vocab.size(col)],
                   embedding_matrix(b, col)[FIRST_INDEX: p.vocab.size(col)]) for col in p.spec.categorical])))
    first_warm, first_cold = (r.metrics["history"][0]["validation_loss"] for r in (warm, cold))
    cold_best = cold.metrics["validation_loss"]
    reached = next((h["steps"] for h in warm.metrics["history"] if h["validation_loss"] <= cold_best), None)
    log.warning("warm start: cosine to the parent's embeddings %.3f (cold %.3f); first validation NLL %.3f "
                "(cold %.3f); the cold run's best %.3f reached at step %s (cold: %d steps)", sims["warm"],
                sims["cold"], first_warm, first_cold, cold_best, reached, cold.metrics["history"][-1]["steps"])
    assert sims["warm"] > 0.9 and sims["cold"] < 0.5
    assert first_warm < first_cold
    assert reached is not None and reached < cold.metrics["history"][-1]["steps"]


def test_bad_updates_and_warm_starts_are_refused(spark, tmp_path: Path, parts,  # type: ignore[no-untyped-def]
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from embedlib.cli import main

    old_file, new_file, union, _ = parts
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF)]
    for item in [f"output_dir={tmp_path}", f"source.path={new_file}", "source.format=parquet", "source.options={}",
                 "source.schema=null"]:
        args += ["--set", item]
    assert main(["vocab", "--update", *args]) == 2  # the command line's flags reach the jobs
    assert "there is no vocabulary at" in caplog.text and "to update" in caplog.text
    run_vocab_job(spark, config(tmp_path, old_file))
    assert main(["train", "--warm-start", str(tmp_path / "nowhere"), *args]) == 2
    assert f"{tmp_path / 'nowhere'}" in caplog.text.split("train failed:")[-1]
    parent = run_train_job(spark, config(tmp_path, old_file, "train.max_steps=100"))
    fewer = config(tmp_path, new_file, f"columns.numeric={FEWER}")
    with pytest.raises(VocabError, match="an update keeps the columns"):
        run_vocab_job(spark, fewer, update=True)
    with pytest.raises(VocabError, match="vocab.lowercase is True but the vocabulary .* was built with False"):
        run_vocab_job(spark, config(tmp_path, new_file, "vocab.lowercase=true"), update=True)
    # a vocabulary rebuilt on other rows (not updated) numbers the values anew: warm start refused
    rebuilt = config(tmp_path / "rebuilt", new_file, f"train.warm_start={parent.bundle_path}")
    run_vocab_job(spark, rebuilt)
    with pytest.raises(TrainError, match="column '.*': the run's vocabulary does not extend bundle"):
        run_train_job(spark, rebuilt)
    # other columns than the parent's: refused, naming them
    other = config(tmp_path / "other", old_file, f"columns.numeric={FEWER}", f"train.warm_start={parent.bundle_path}")
    run_vocab_job(spark, other)
    with pytest.raises(TrainError, match=r"models categorical .* and numeric \['age', 'fnlwgt', 'education-num'.*"
                                         r"this run .* numeric \['age', 'fnlwgt', 'capital-gain'"):
        run_train_job(spark, other)
