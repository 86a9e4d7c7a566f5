"""Where the model runs: the device settings resolved with CUDA reported absent (and present), bf16
autocast trained on the CPU, scoring on the model's device, and ``benchmarks/gpu_bench.py``'s quick run on
the CPU without Spark, Delta or MLflow importable (as on a bare GPU machine).

Pinned memory is not exercised here: torch pins host memory only through a CUDA driver, which this
machine has not (``to_device`` copies as is on the CPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import embedlib
from embedlib.core.config import ConfigError, load_config
from embedlib.core.config.schema import TrainConfig
from embedlib.core.devices import DeviceError, autocast, model_device, resolve_device, to_device
from embedlib.core.train.errors import TrainError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA reported present (two devices); nothing here touches one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_cuda_and_a_named_gpu_is_refused_by_its_key(no_cuda: None) -> None:
    assert resolve_device("auto", "score.device") == torch.device("cpu")
    assert resolve_device(False, "train.use_gpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"score\.device='cuda' but this process sees no CUDA device"):
        resolve_device("cuda", "score.device")
    with pytest.raises(DeviceError, match=r"train\.use_gpu=True but this process sees no CUDA device"):
        resolve_device(True, "train.use_gpu")
    with pytest.raises(DeviceError, match=r"score\.device='tpu' is not a device"):
        resolve_device("tpu", "score.device")


def test_auto_is_cuda_where_present_and_ranks_share_the_gpus(two_gpus: None) -> None:
    assert resolve_device("auto", "score.device") == torch.device("cuda", 0)
    assert resolve_device(True, "train.use_gpu", local_rank=3) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", "score.device") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"sees 2 CUDA device\(s\)"):
        resolve_device("cuda:2", "score.device")


def test_the_training_backends_follow_train_use_gpu(no_cuda: None) -> None:
    from embedlib.spark.train.backends import LocalBackend, _device, _resolve_gpu, resolve_backend

    assert not _resolve_gpu(None, TrainConfig(use_gpu="auto"), on_driver=True)
    assert resolve_backend(None, TrainConfig(backend="local")) == LocalBackend(use_gpu=False)
    assert _device(False) == torch.device("cpu")
    with pytest.raises(TrainError, match=r"train\.use_gpu=True but this process sees no CUDA device"):
        _device(True)


def test_the_device_settings_are_checked_when_the_config_loads() -> None:
    cfg = load_config([], ["source.path=x.csv"])
    assert (cfg.score.device, cfg.train.precision) == ("auto", "fp32")
    with pytest.raises(ConfigError, match="score.device"):
        load_config([], ["source.path=x.csv", "score.device=tpu"])
    with pytest.raises(ConfigError, match="train.precision"):
        load_config([], ["source.path=x.csv", "train.precision=fp16"])


def test_cpu_copies_and_autocast(no_cuda: None) -> None:
    x = torch.arange(6.0).reshape(2, 3)
    assert to_device(x, torch.device("cpu")) is x
    linear = torch.nn.Linear(3, 2)
    assert model_device(linear) == torch.device("cpu")
    with autocast(torch.device("cpu"), "bf16"):
        assert linear(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert linear(x).dtype == torch.float32
    with pytest.raises(DeviceError, match="train.precision='fp8'"), autocast(torch.device("cpu"), "fp8"):
        pass


def _table(rows: int = 1200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 6, rows)
    return pd.DataFrame({"kind": [f"k{k}" for k in kind], "shop": [f"s{(k + rng.integers(0, 2)) % 9}" for k in kind],
                         "price": kind * 10.0 + rng.normal(0, 1, rows), "qty": rng.normal(5, 1, rows)})


def test_bf16_autocast_trains_on_the_cpu_as_well_as_fp32(no_cuda: None) -> None:
    """200 steps each (~4 s together): bf16 autocast changes the weights (the path ran), not the quality."""
    frame = _table()
    fits = {p: embedlib.fit(frame, categorical=["kind", "shop"], numeric=["price", "qty"],
                            settings={"model.size": "small", "train.max_steps": 200, "train.patience": 0,
                                      "train.precision": p})
            for p in ("fp32", "bf16")}
    fp32, bf16 = (fits[p].manifest["metrics"]["validation_loss"] for p in ("fp32", "bf16"))
    assert math.isfinite(bf16) and abs(bf16 - fp32) < 0.05 * abs(fp32), (fp32, bf16)
    weights = [next(iter(fits[p].model.state_dict().values())) for p in ("fp32", "bf16")]
    assert not torch.equal(*weights)
    assert all(v.dtype == torch.float32 for v in fits["bf16"].model.state_dict().values() if v.is_floating_point())
    # scoring runs on the bundle's device: auto is the CPU here, and a named GPU is refused
    bundle = fits["fp32"]
    before = bundle.score_frame(frame.head(50))["anomaly_score"].to_numpy()
    assert model_device(bundle.to("auto").model) == torch.device("cpu")
    assert np.array_equal(bundle.score_frame(frame.head(50))["anomaly_score"].to_numpy(), before)
    with pytest.raises(DeviceError, match=r"score\.device='cuda'"):
        bundle.to("cuda")


@pytest.mark.launch
@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_the_cpu_without_spark(tmp_path: Path) -> None:
    """``gpu_bench.py --quick --device cpu`` (~15 s: five small fits, scoring at two batch sizes, a cold
    process) with pyspark, delta-spark, deltalake and mlflow made unimportable, as on the device machine."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("pyspark", "delta", "deltalake", "mlflow", "py4j"):
                    raise ImportError(f"{name} is not on the device machine")
        sys.meta_path.insert(0, Refuse())
    """))
    out = tmp_path / "gpu.json"
    env = {"PYTHONPATH": f"{blocker}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--quick", "--device", "cpu",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["quick"]
    training = {(t["table"][0], t["precision"]): t for t in result["training"]}
    assert set(training) == {("A", "fp32"), ("A", "bf16"), ("B", "fp32")}
    assert all(t["samples_per_s"] > 0 and math.isfinite(t["validation_nll"]) and t["steps"] == t_steps
               for t, t_steps in zip(training.values(), (40, 40, 20)))
    pair = result["bf16_vs_fp32"][0]
    assert abs(pair["relative"]) < 0.05 and pair["difference"] == pytest.approx(pair["bf16"] - pair["fp32"])
    assert {(s["function"], s["device"]) for s in result["scoring"]} == {("score_rows", "cpu"), ("build_output", "cpu")}
    for s in result["scoring"]:
        assert set(s["rows_per_s"]) == {"1000", "4096"} and min(s["rows_per_s"].values()) > 0
        assert s["saturates_at"] in (1000, 4096)
    assert 0 < result["cold_start_seconds"]["cpu"] < 120
    assert "| A: 10 cat + 20 num | cpu | bf16 | 40 × 512 |" in done.stdout
