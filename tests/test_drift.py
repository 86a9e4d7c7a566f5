"""``embedlib drift``: bins counted by the score job, PSI against the bundle's training profile,
the report, the figure and the exit code that fails a scheduled job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlib.cli import main
from embedlib.core.bundle import load_bundle
from embedlib.core.config import load_config
from embedlib.core.drift import ALERT_EXIT, TOP_VALUES, DriftAlert, n_bins, psi
from embedlib.spark.runs import run_drift_job
from embedlib.spark.score import run_score_job

from .conftest import ADULT_CONF, ADULT_DATA, ADULT_TEST, BASE_CONF, adult_pandas, tables_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sets(out: Path, source: Path, run_id: str) -> list[str]:
    return [f"output_dir={out}", f"source.path={source}", "source.format=parquet", "source.options={}",
            "source.schema=null", f"score.source={source}", f"score.run_id={run_id}", "delta.engine=delta-rs"]


def expected_bins(frame: pd.DataFrame, bundle, column: str) -> list[int]:  # type: ignore[no-untyped-def]
    """A column's rows per drift bin, computed here with pandas from the bundle's vocabulary."""
    if column in bundle.spec.categorical:
        cv = bundle.vocab[column]
        index = {v: i + 2 for i, v in enumerate(cv.values)}
        codes = frame[column].map(lambda v: 0 if pd.isna(v) else index.get(str(v), 1)).to_numpy()
        return np.bincount(np.minimum(codes, 2 + TOP_VALUES), minlength=n_bins(True)).tolist()
    st = bundle.vocab.numeric[column]
    x = frame[column].astype(float).to_numpy()
    x = np.sign(x) * np.log1p(np.abs(x)) if st.log1p else x
    z = (x - st.mean) / st.scale
    cut = np.where(np.isnan(z), 0, 1 + np.searchsorted([-2, -1, -0.5, 0, 0.5, 1, 2], z, side="right"))
    return np.bincount(cut, minlength=n_bins(False)).tolist()


def test_drift_follows_scoring_runs_and_fails_the_job_on_a_shift(spark, adult_trained, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = adult_trained
    shutil.copytree(cfg.layout.root, tmp_path / cfg.name, ignore=shutil.ignore_patterns("scores", "score_runs", "_work"))
    bundle = load_bundle(cfg.layout.bundle)
    # the training profile: shares per bin over the training rows, as pandas counts them on adult.data
    train = adult_pandas(ADULT_DATA)
    for column in ("sex", "hours-per-week"):
        shares = bundle.manifest["profile"][column]
        assert sum(shares) == pytest.approx(1.0)
        assert np.allclose(shares, np.array(expected_bins(train, bundle, column)) / len(train), atol=0.01)

    same = adult_pandas(ADULT_TEST)
    shifted = same.copy()
    shifted["age"] = shifted["age"] + 25  # ages far above training's
    shifted.loc[shifted.index[::2], "native-country"] = "Atlantis"  # half the rows out of vocabulary
    paths = {}
    for name, frame in (("same", same), ("shifted", shifted)):
        paths[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    quiet = run_score_job(spark, load_config([BASE_CONF, ADULT_CONF], sets(tmp_path, paths["same"], "r1")))
    # the score job's bin counts are the rows per bin, column by column
    for column in ("education", "native-country", "age", "capital-gain"):
        assert quiet.bin_counts[column] == expected_bins(same, bundle, column), column
    drift_cfg = load_config([BASE_CONF, ADULT_CONF], sets(tmp_path, paths["same"], "r1"))
    lines = run_drift_job(spark, drift_cfg)  # no alert: the held-out rows look like the training rows
    doc = json.loads((tmp_path / cfg.name / "drift" / "drift.json").read_text())
    (run,) = doc["runs"]
    assert run["run_id"] == "r1" and max(run["psi"].values()) < 0.05 and doc["alerts"] == []
    assert (tmp_path / cfg.name / "drift" / "psi.png").read_bytes().startswith(PNG_MAGIC)
    assert any(line.startswith("newest run r1") for line in lines)

    run_score_job(spark, load_config([BASE_CONF, ADULT_CONF], sets(tmp_path, paths["shifted"], "r2")))
    with pytest.raises(DriftAlert, match=r"PSI above drift.psi_alert=0.25 in age, native-country") as alert:
        run_drift_job(spark, drift_cfg)
    assert alert.value.exit_code == ALERT_EXIT
    doc = json.loads((tmp_path / cfg.name / "drift" / "drift.json").read_text())
    assert [r["run_id"] for r in doc["runs"]] == ["r1", "r2"]
    newest = doc["runs"][-1]
    profile = bundle.manifest["profile"]
    assert newest["psi"]["age"] == pytest.approx(psi(profile["age"], expected_bins(shifted, bundle, "age")))
    assert newest["oov_rate"]["native-country"] > 0.5 and newest["psi"]["education"] < 0.05
    # the command line: the report on stdout, exit code 3; a higher threshold lets it pass
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF)]
    for item in sets(tmp_path, paths["same"], "r1"):
        args += ["--set", item]
    assert main(["drift", *args]) == ALERT_EXIT
    out = capsys.readouterr().out
    assert "newest run r2" in out and "ALERT" in out
    assert main(["drift", *args, "--set", "drift.psi_alert=1000"]) == 0
    runs = tables_of(spark).read(drift_cfg.layout.score_runs).select("run_id").collect()
    assert {r["run_id"] for r in runs} == {"r1", "r2"}
