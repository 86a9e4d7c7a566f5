"""`embedlib evaluate`: metrics against independent computations, PNG files, the labels join, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from embedlib.cli import main
from embedlib.core.bundle import load_bundle
from embedlib.core.inference import score_rows
from embedlib.evaluate import FIGURES, detection_metrics, plant_anomalies

from .conftest import ADULT_CONF, ADULT_DATA, ADULT_TEST, BASE_CONF, TRAIN_SETS, adult_pandas, copy_vocab

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_args(out: Path, *extra: str) -> list[str]:
    sets = [f"output_dir={out}", f"source.path={ADULT_DATA}", *TRAIN_SETS, f"score.source={ADULT_TEST}", *extra]
    return ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF), *(a for s in sets for a in ("--set", s))]


def by_hand(labels: np.ndarray, scores: np.ndarray, threshold: float, k: int) -> dict[str, float]:
    """Precision and recall at a threshold and in the top k, counted directly."""
    y = labels.astype(bool)
    flagged = scores > threshold
    top = np.zeros(len(y), dtype=bool)
    top[np.argsort(-scores, kind="stable")[:k]] = True
    return {
        "precision": (flagged & y).sum() / max(flagged.sum(), 1),
        "recall": (flagged & y).sum() / y.sum(),
        "precision_at_k": (top & y).sum() / k,
        "recall_at_k": (top & y).sum() / y.sum(),
        "flagged": int(flagged.sum()),
    }


def check_pngs(files: dict[str, str]) -> None:
    from PIL import Image

    for name in FIGURES:
        path = Path(files[name])
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, (name, len(data))
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300


def test_metrics_on_small_literal_data() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.7, 0.05])
    m = detection_metrics("ours", labels, scores, threshold=0.5, top_k=2)
    # AUROC = share of (positive, negative) pairs ordered correctly: 13 of 15
    assert m.auroc == pytest.approx(13 / 15)
    # flagged: 0.8 (pos), 0.9 (pos), 0.7 (neg) → precision 2/3, recall 2/3; top 2 are both positive
    assert (m.flagged, m.precision, m.recall) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (m.top_k, m.precision_at_k, m.recall_at_k) == (2, 1.0, pytest.approx(2 / 3))
    # AP: positives at ranks 1, 2, 5 → (1/1 + 2/2 + 3/5) / 3
    assert m.auprc == pytest.approx((1 + 1 + 0.6) / 3)
    with pytest.raises(ValueError, match="need both classes"):
        detection_metrics("ours", np.zeros(4), scores[:4], threshold=0.5, top_k=2)


def test_plant_with_baselines(spark, adult_trained, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained
    assert main(["evaluate", *run_args(Path(cfg.output_dir)), "--plant", "0.02", "--seed", "3", "--baselines"]) == 0
    out = capsys.readouterr().out
    folder = Path(cfg.layout.evaluation)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["mode"] == "plant" and metrics["rows"] == 16281 and metrics["positives"] == 326

    # the same planted rows, built and scored independently of the command (pandas + the bundle)
    bundle = load_bundle(result.bundle_path)
    planted, labels = plant_anomalies(adult_pandas(ADULT_TEST), bundle.spec.columns, fraction=0.02, seed=3)
    scores = score_rows(bundle, pa.Table.from_pandas(planted, preserve_index=False)).score
    ours = metrics["methods"]["ours"]
    assert ours["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert ours["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert ours["threshold"] == pytest.approx(bundle.threshold_for("nats"))
    hand = by_hand(labels, scores, bundle.threshold_for("nats"), 326)
    assert ours["top_k"] == 326
    for key, value in hand.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key

    # the baselines scored the same rows: better than chance (a misaligned row order gives ~0.5),
    # and each flags about 1 - score.threshold_quantile of the rows at its own threshold
    assert set(metrics["methods"]) == {"ours", "calibrated", "mse", "iforest"}
    assert metrics["methods"]["mse"]["auroc"] > 0.58
    assert ours["auroc"] > metrics["methods"]["mse"]["auroc"] > metrics["methods"]["iforest"]["auroc"]
    for method in metrics["methods"].values():
        assert 0.003 < method["flagged"] / 16281 < 0.03, method
        assert 0 < method["auprc"] < 1

    # flagged rows carry more nats in (nearly) every column
    means = metrics["column_means"]
    assert set(means) == set(bundle.spec.columns)
    assert sum(v["flagged"] > v["unflagged"] for v in means.values()) >= len(means) - 1

    check_pngs(metrics["files"])
    assert metrics["files"]["roc"] == str(folder / "roc.png")
    for name in ("AUROC", "AUPRC", "embedlib (NLL in nats)", "seed design: MSE on embedding output",
                 "IsolationForest", f"{folder}/score_histogram.png", f"{folder}/metrics.json"):
        assert name in out, name


@pytest.fixture()
def labelled_run(spark, adult_trained, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A copy of the trained run whose source is adult.test with planted rows and a row_id column."""
    from embedlib.core.config import load_config

    cfg, _ = adult_trained
    frame = adult_pandas(ADULT_TEST)
    bundle = load_bundle(cfg.layout.bundle)
    planted, labels = plant_anomalies(frame, bundle.spec.columns, fraction=0.03, seed=11)
    planted.insert(0, "row_id", np.arange(len(planted), dtype=np.int64))
    source = tmp_path / "planted.parquet"
    planted.to_parquet(source, index=False)
    sets = [f"output_dir={tmp_path / 'out'}", f"source.path={source}", "source.format=parquet",
            "source.schema=null", "source.options={}", f"score.source={source}", "columns.id=[row_id]"]
    run = load_config([BASE_CONF, ADULT_CONF], sets)
    shutil.copytree(cfg.layout.bundle, run.layout.bundle)
    copy_vocab(cfg, run)
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF), *(a for s in sets for a in ("--set", s))]
    assert main(["score", *args]) == 0
    return run, args, planted, labels, bundle


def test_labels_joined_on_ids(spark, labelled_run, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run, args, planted, labels, bundle = labelled_run
    scores = score_rows(bundle, pa.Table.from_pandas(planted.drop(columns=["row_id"]), preserve_index=False)).score

    # 0/1 labels for every row, shuffled, in a CSV file
    table = tmp_path / "labels.csv"
    pd.DataFrame({"row_id": planted["row_id"], "is_planted": labels}).sample(frac=1, random_state=0) \
        .to_csv(table, index=False)
    assert main(["evaluate", *args, "--labels", str(table), "--label-column", "is_planted", "--top-k", "100"]) == 0
    assert "16,281 rows of" in capsys.readouterr().out
    metrics = json.loads(Path(run.layout.evaluation, "metrics.json").read_text())
    ours = metrics["methods"]["ours"]
    assert metrics["mode"] == "labels" and metrics["rows"] == 16281 and metrics["positives"] == int(labels.sum())
    assert ours["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert ours["auroc"] > 0.65
    assert ours["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    hand = by_hand(labels, scores, bundle.threshold_for("nats"), 100)
    for key, value in hand.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    check_pngs(metrics["files"])

    # string labels for part of the rows (some null), in Parquet: --positive names the anomalous value
    part = planted[["row_id", "income"]].head(5000).copy()
    part.loc[part.index[:20], "income"] = None
    part.to_parquet(tmp_path / "income.parquet", index=False)
    assert main(["evaluate", *args, "--labels", str(tmp_path / "income.parquet"), "--label-column", "income",
                 "--positive", ">50K."]) == 0
    out = capsys.readouterr().out
    assert "20 label(s) were null" in out and "11,301 scored rows had no label" in out
    metrics = json.loads(Path(run.layout.evaluation, "metrics.json").read_text())
    kept = part["income"].notna().to_numpy()
    y = (part["income"][kept] == ">50K.").to_numpy().astype(int)
    assert metrics["rows"] == 4980 and metrics["positives"] == y.sum()
    assert metrics["methods"]["ours"]["top_k"] == y.sum()
    assert metrics["methods"]["ours"]["auroc"] == pytest.approx(roc_auc_score(y, scores[:5000][kept]), abs=1e-6)


def test_label_errors(spark, labelled_run, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    run, args, planted, _, _ = labelled_run
    table = tmp_path / "labels.parquet"
    planted[["row_id", "income"]].to_parquet(table, index=False)

    def fails(*extra: str, sets: tuple[str, ...] = ()) -> str:
        caplog.clear()
        assert main(["evaluate", *args, *(a for s in sets for a in ("--set", s)), *extra]) == 2
        return caplog.text

    assert "lacks column(s) salary; its columns are row_id, income" in fails(
        "--labels", str(table), "--label-column", "salary")
    assert "pass --positive VALUE" in fails("--labels", str(table), "--label-column", "income")
    assert "--positive 'rich' does not occur in column 'income'" in fails(
        "--labels", str(table), "--label-column", "income", "--positive", "rich")
    assert "needs --label-column NAME" in fails("--labels", str(table))
    assert "only apply with --labels" in fails("--plant", "0.02", "--label-column", "income")
    assert "in (0, 0.5)" in fails("--plant", "0.7")
    assert "columns.id is empty" in fails("--labels", str(table), "--label-column", "income", "--positive", ">50K.",
                                          sets=("columns.id=[]",))
    assert "set score.source to a held-out table" in fails("--plant", "0.02", sets=("score.source=null",))
    assert "no scores table at" in fails("--labels", str(table), "--label-column", "income", "--positive", ">50K.",
                                         sets=(f"score.output={tmp_path / 'nowhere'}",))
    # a second score run of the same rows appended to the table: the join would count rows twice
    assert main(["score", *args, "--set", "score.run_id=again"]) == 0
    assert "several score runs" in fails("--labels", str(table), "--label-column", "income", "--positive", ">50K.")
    assert not Path(run.layout.evaluation).exists()  # nothing written by a refused evaluation
    for both_or_neither in (["--labels", str(table), "--plant", "0.1"], []):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", *args, *both_or_neither])
        assert exc.value.code == 2


@pytest.mark.launch
def test_evaluate_job_entry_point() -> None:
    import subprocess
    import sys

    from .conftest import ROOT

    proc = subprocess.run([sys.executable, "jobs/evaluate.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--plant FRACTION" in proc.stdout and "--label-column NAME" in proc.stdout and "--baselines" in proc.stdout
