"""The model bundle: verified loading, tamper refusal, scoring without Spark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedlib.core.bundle import MANIFEST, VOCAB, WEIGHTS, BundleError, load_bundle
from embedlib.core.inference import score_rows

from .conftest import ADULT_TEST, ROOT, adult_pandas


def test_bundle_contents(adult_trained) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    m = bundle.manifest
    assert set(Path(result.bundle_path).iterdir()) == {Path(result.bundle_path) / n for n in (MANIFEST, WEIGHTS, VOCAB)}
    assert m["categorical"] == list(cfg.columns.categorical) and m["numeric"] == list(cfg.columns.numeric)
    assert m["columns"]["age"] == "numeric" and m["columns"]["sex"] == "categorical"
    assert m["vocab_sizes"]["sex"] == 4  # Male, Female + null + OOV rows
    # 1.6 * 4 ** 0.56 = 3.4 -> 3; native-country: 40 values + 2 -> round(1.6 * 42 ** 0.56) = 13
    assert m["embedding_dims"]["sex"] == 3 and m["embedding_dims"]["native-country"] == 13
    assert m["threshold_quantile"] == 0.99 and m["threshold"] > 0
    assert m["metrics"]["validation_loss"] == result.metrics["validation_loss"]
    assert len(m["metrics"]["history"]) == 6 and "torch_version" in m and "library_version" in m
    assert m["numeric_stats"]["age"]["mean"] == pytest.approx(38.58, abs=0.01)
    assert bundle.vocab.content_hash == m["vocab_hash"]


@pytest.mark.parametrize("name", [WEIGHTS, VOCAB, MANIFEST])
def test_one_changed_byte_is_refused(adult_trained, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    copy = tmp_path / "bundle"
    shutil.copytree(result.bundle_path, copy)
    data = bytearray((copy / name).read_bytes())
    pos = len(data) // 2
    if name == MANIFEST:  # change a digit of the threshold so the JSON stays valid
        text = data.decode()
        key = text.index('"threshold": ') + len('"threshold": ')
        pos = key + 1
    data[pos] = (data[pos] + 1) % 256 if name != MANIFEST else ord("7" if chr(data[pos]) != "7" else "8")
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name if name != MANIFEST else "was edited") as err:
        load_bundle(str(copy))
    # the message gives both hashes: what the file hashes to now, and what bundle.json recorded
    manifest = json.loads((copy / MANIFEST).read_text())
    if name == MANIFEST:
        from embedlib.core.bundle import _bundle_id

        both = (_bundle_id(manifest), manifest["bundle_id"])
    else:
        import hashlib

        both = (hashlib.sha256(bytes(data)).hexdigest(), manifest["files"][name])
    assert both[0] != both[1] and all(h in str(err.value) for h in both), str(err.value)


def test_missing_file_and_foreign_vocab_are_refused(adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    copy = tmp_path / "b1"
    shutil.copytree(result.bundle_path, copy)
    (copy / VOCAB).unlink()
    with pytest.raises(BundleError, match=f"{VOCAB} is missing"):
        load_bundle(str(copy))
    # a vocabulary from another run, with the manifest's hash entry updated to match
    other = tmp_path / "b2"
    shutil.copytree(result.bundle_path, other)
    import pyarrow.parquet as pq

    table = pq.read_table(other / VOCAB)
    counts = table.column("count").to_pylist()
    counts[5] += 1
    pq.write_table(table.set_column(3, "count", pa.array(counts, pa.int64())), other / VOCAB)
    manifest = json.loads((other / MANIFEST).read_text())
    import hashlib

    manifest["files"][VOCAB] = hashlib.sha256((other / VOCAB).read_bytes()).hexdigest()
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="was edited"):
        load_bundle(str(other))


def test_scores_add_up_and_match_the_loss(adult_trained) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    rows = pa.Table.from_pandas(adult_pandas(ADULT_TEST).head(500), preserve_index=False)
    scored = score_rows(bundle, rows)
    assert scored.score.shape == (500,)
    np.testing.assert_allclose(scored.contributions.sum(axis=1), scored.score, rtol=0, atol=1e-9)
    n_cat = len(bundle.spec.categorical)
    assert (scored.contributions[:, :n_cat] >= 0).all()  # −log of a probability
    assert np.isfinite(scored.contributions).all()  # a numeric's −log density: below 0 where it is sharp and right
    # mean score on held-out rows is of the order of the validation loss
    assert 0.5 < scored.score.mean() / result.metrics["validation_loss"] < 2.0
    assert ((scored.expected_prob > 0) & (scored.expected_prob <= 1)).all()
    # the arg-max is at least as likely as the observed value (to float32 precision)
    observed_prob = np.exp(-scored.contributions[:, :n_cat])
    assert (observed_prob <= scored.expected_prob + 1e-6).all()


@pytest.mark.launch
def test_loads_and_scores_without_pyspark(adult_trained) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    code = f"""
import sys
import pyarrow as pa
from embedlib.core.bundle import load_bundle
from embedlib.core.inference import score_rows
b = load_bundle({result.bundle_path!r})
t = pa.table({{c: pa.array([None, "x"], pa.string()) for c in b.spec.categorical}} |
             {{c: pa.array([30.0, None]) for c in b.spec.numeric}})
r = score_rows(b, t)
assert r.score.shape == (2,) and (r.score > 0).all(), r.score
assert "pyspark" not in sys.modules, "pyspark was imported"
print("ok", r.score.round(3).tolist())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_pickled_weights_never_run(adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A weights file replaced by a pickle that would run code is refused, nothing runs."""
    import pickle

    _, result = adult_trained
    copy = tmp_path / "b"
    shutil.copytree(result.bundle_path, copy)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    payload = pickle.dumps(Payload())
    pickle.loads(payload)  # what unpickling would do: the payload really runs ...
    assert marker.exists()
    marker.unlink()  # ... so its absence below means nothing unpickled it
    (copy / WEIGHTS).write_bytes(payload)
    with pytest.raises(BundleError, match=WEIGHTS):
        load_bundle(str(copy))
    # even with the manifest's hash updated, safetensors never unpickles
    import hashlib

    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"][WEIGHTS] = hashlib.sha256((copy / WEIGHTS).read_bytes()).hexdigest()
    from embedlib.core.bundle import _bundle_id

    manifest["bundle_id"] = _bundle_id(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"{WEIGHTS} does not fit"):
        load_bundle(str(copy))
    assert not marker.exists()


def test_a_numeric_head_this_version_does_not_know_is_named(adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A bundle written by a newer embedlib (a numeric head this version lacks, its id consistent) is refused
    with the key and the way out, not a KeyError."""
    from embedlib.core.bundle import _bundle_id

    _, result = adult_trained
    newer = tmp_path / "newer"
    shutil.copytree(result.bundle_path, newer)
    manifest = json.loads((newer / MANIFEST).read_text())
    manifest["model"]["numeric_head"] = "spline"
    manifest["bundle_id"] = _bundle_id(manifest)
    (newer / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="numeric_head is 'spline', not one of unit, gaussian, mixture: .*newer embedlib"):
        load_bundle(str(newer))
