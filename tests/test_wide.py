"""Wide categoricals: the adaptive softmax head gives exact nats and the exact arg-max, trains on every
backend (each parameter takes part in every step), and a bundle with one scores like any other."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest
import torch

import embedlib
from embedlib.core.heads import SLACK, _could_win
from embedlib.core.model import (
    AdaptiveHead,
    EmbeddingAutoencoder,
    ModelSpec,
    WideOutput,
    column_nll,
    masked_loss,
    random_mask,
    top_of,
)


def _full_log_probs(head: AdaptiveHead, hidden: torch.Tensor, n: int) -> torch.Tensor:
    """log p(v) of every index v, one call per index (the reference the head never computes itself)."""
    rows = hidden.shape[0]
    return torch.stack([head.log_prob_of(hidden, torch.full((rows,), v)) for v in range(n)], dim=1)


@pytest.mark.parametrize("bucket", [0, 32])
def test_adaptive_head_gives_exact_normalised_nats_and_the_exact_arg_max(bucket: int) -> None:
    torch.manual_seed(0)
    n = 300
    # head: 20 indices + 2 cluster tokens; clusters [20, 100), [100, 300) — or, with buckets, the last
    # cluster's 200 values in 7 buckets (the last of 8 values), each with its own head token
    head = AdaptiveHead(16, n, (20, 100), bucket)
    assert head.head.out_features == (22 if not bucket else 21 + 7)
    with torch.no_grad():
        for p in head.parameters():  # large weights: peaked distributions, arg-max often inside a cluster
            p.mul_(8.0)
    hidden = torch.randn(64, 16)
    with torch.no_grad():
        full = _full_log_probs(head, hidden, n)
        np.testing.assert_allclose(torch.logsumexp(full.double(), dim=1).numpy(), 0.0, atol=1e-5)  # normalised
        target = torch.randint(0, n, (64,))
        runs = []  # the head's linear layer, each time it runs
        hook = head.head.register_forward_hook(lambda *_: runs.append(1))
        out = head(hidden)
        nll = column_nll([out], hidden.new_zeros((64, 0)), target[:, None], hidden.new_zeros((64, 0)),
                         hidden.new_zeros((64, 0)))
        np.testing.assert_allclose(nll[:, 0].numpy(), -full.gather(1, target[:, None]).squeeze(1).numpy(), atol=1e-5)
        assert isinstance(out, WideOutput)
        kept = out.kept_top()
        assert len(runs) == 1  # from the NLL's log-softmax of the head, not a second run
        hook.remove()
        logits = head.head(hidden)
        torch.testing.assert_close(kept, head.head_top(hidden, logits, torch.log_softmax(logits, dim=1)), rtol=0, atol=0)
        best, prob = top_of(head(hidden))  # the head run again
        assert torch.equal(best, full.argmax(dim=1))
        np.testing.assert_allclose(prob.numpy(), full.max(dim=1).values.exp().double().numpy(), rtol=1e-5)
        some = torch.arange(0, 64, 3)
        kept_best, kept_prob = top_of(out.rows(some))  # from what the NLL kept, for some rows
        assert torch.equal(kept_best, best[some])
        np.testing.assert_allclose(kept_prob.numpy(), prob[some].numpy(), rtol=1e-6)
        assert (best >= 20).any() and (best < 20).any()  # both the head and the clusters held arg-maxes
        assert (best >= 100).any()  # … and the last cluster (its buckets)

    # every parameter gets a gradient in a step whose targets all sit in the head (DDP, Horovod)
    loss = -head.log_prob_of(hidden, torch.randint(0, 20, (64,))).mean()
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in head.tail.parameters())  # zeros


@pytest.mark.parametrize("bucket", [0, 32])
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_adaptive_head_ceilings_bound_each_clusters_best_value_and_spare_softmaxes(bucket: int, scale: float) -> None:
    """``_ceilings`` is an upper bound of the best ``log p(v | cluster)`` (of each bucket's, with buckets)
    for every row, below the trivial bound 0 for some rows the cluster's own probability alone would
    open, and the arg-max that uses it stays exact."""
    torch.manual_seed(1)
    n, short = 300, 20
    head = AdaptiveHead(16, n, (short, 100), bucket)
    with torch.no_grad():
        for p in head.parameters():  # 1: initial weights, flat clusters; 8: peaked ones
            p.mul_(scale)
        hidden = torch.randn(256, 16)
        full = _full_log_probs(head, hidden, n)
        head_lp = torch.log_softmax(head.head(hidden), dim=1)
        best_in_head = head_lp[:, :short].amax(dim=1)
        groups = [(0, 20, 100)] + ([(1, 100, 300)] if not bucket else
                                   [(1 + b, 100 + b * bucket, min(n, 100 + (b + 1) * bucket)) for b in range(head.n_buckets)])
        spared = 0
        for token, lo, hi in groups:
            cluster = min(token, head.plain)
            slabs = head._slabs() if cluster == head.plain and bucket else None
            projected = head._layers(cluster)[0](hidden)
            ceilings = head._ceilings(cluster, projected, slabs)
            assert torch.equal(ceilings, head._ceilings(cluster, projected))  # the slabs are only a cache
            ceiling = ceilings[:, 0] if cluster < head.plain else ceilings[:, token - 1]
            cluster_lp = head_lp[:, short + token]
            true_best = (full[:, lo:hi] - cluster_lp[:, None]).amax(dim=1)  # log p(v | cluster or bucket)
            assert bool((ceiling >= true_best).all()) and bool((ceiling <= 0).all())
            spared += int(((cluster_lp > best_in_head) & (cluster_lp + ceiling <= best_in_head)).sum())
        assert spared > 0 or scale > 1  # flat clusters: softmaxes spared; peaked ones: opened, still exact
        best, _ = top_of(head(hidden))
        assert torch.equal(best, full.argmax(dim=1))
        # the bound from the cluster's exact max (_could_win) holds for every row: asked for the rows whose
        # best log p(v | cluster) may reach the true one, it keeps them all; asked for more than 0, none
        projected = head._layers(0)[0](hidden)
        logits, rows = head._layers(0)[1](projected), torch.arange(len(hidden))
        true_best = torch.log_softmax(logits, dim=1).amax(dim=1)
        total = projected @ head._layers(0)[1].weight.sum(dim=0)
        kept, kept_logits, top = _could_win(logits.clone(), total, 1e-6 - true_best, rows)
        assert torch.equal(kept, rows) and torch.equal(top, logits.amax(dim=1))
        assert len(_could_win(logits.clone(), total, torch.full_like(total, -2 * SLACK), rows)[0]) == 0


def test_masked_training_loss_computes_a_wide_column_on_its_hidden_cells_only() -> None:
    """The masked kind's training loss with ``hidden_cells`` (a wide column's head run on its hidden
    cells only) equals the loss over every cell's NLL, and so do the gradients."""
    torch.manual_seed(2)
    spec = ModelSpec.build(["a", "b"], [50, 6_000], ["x"], adaptive_above=1_000, kind="masked")
    model = EmbeddingAutoencoder(spec)
    assert isinstance(model.cat_heads[1], AdaptiveHead)
    rows = 128
    cat = torch.stack([torch.randint(0, 50, (rows,)), torch.randint(0, 6_000, (rows,))], dim=1)
    num, missing = torch.randn(rows, 1), torch.zeros(rows, 1)
    mask = random_mask(rows, 3, 0.5, torch.Generator().manual_seed(0))
    assert 0 < int(mask[:, 1].sum()) < rows  # the wide column is hidden in some rows, shown in others

    def loss_and_grads(hidden_cells: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits, pred, _ = model(cat, num, missing, mask)
        nll = column_nll(logits, pred, cat, num, missing, hidden_cells=hidden_cells)
        if hidden_cells is not None:
            assert bool((nll[:, 1][mask[:, 1] == 0] == 0).all())  # not computed where shown
        loss = masked_loss(nll, mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    every, every_grads = loss_and_grads(None)
    hidden, hidden_grads = loss_and_grads(mask)
    torch.testing.assert_close(hidden, every, rtol=1e-6, atol=1e-6)
    for a, b in zip(hidden_grads, every_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_spec_gives_wide_columns_an_adaptive_head_and_reads_old_specs() -> None:
    spec = ModelSpec.build(["a", "b"], [50, 30_000], ["x"], adaptive_above=10_000, kind="masked")
    assert spec.cutoffs == ((), (256, 4_096)) and spec.buckets == (0, 1_024)
    assert ModelSpec.build(["b"], [3_000], [], adaptive_above=1_000).buckets == (0,)  # no cluster past 4,096
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "cutoffs"}  # a bundle written before adaptive heads
    assert ModelSpec.from_dict(old).cutoffs_of(1) == ()
    # a bundle written before buckets: three clusters, each one softmax, as it was trained
    legacy = {k: v for k, v in spec.to_dict().items() if k != "buckets"} | {"cutoffs": [[], [256, 4_096, 65_536]]}
    head = EmbeddingAutoencoder(ModelSpec.from_dict(legacy | {"cardinalities": [50, 70_000]})).cat_heads[1]
    assert isinstance(head, AdaptiveHead) and head.bucket == 0 and head.head.out_features == 256 + 3
    assert ModelSpec.build(["b"], [30_000], [], adaptive_above=None).cutoffs == ((),)


def test_warm_start_from_a_bundle_written_before_buckets() -> None:
    """A parent whose last clusters are plain softmaxes ([4,096, 65,536) and [65,536, 70,000)) warm-starts
    today's bucketed head: its embeddings, head rows and first clusters carry over where they still mean
    the same values, each bucket's token is its old cluster's with the bucket's share, and the model it starts
    from is normalised over all 70,000 values and gives each old cluster's values the parent's probability."""
    from types import SimpleNamespace

    from embedlib.core.train.warm import warm_weights

    spec = ModelSpec.build(["a", "b"], [50, 70_000], ["x"], adaptive_above=10_000)
    assert spec.cutoffs_of(1) == (256, 4_096) and spec.bucket_of(1) == 1_024
    legacy = {k: v for k, v in spec.to_dict().items() if k != "buckets"} | {"cutoffs": [[], [256, 4_096, 65_536]]}
    torch.manual_seed(0)
    parent_model = EmbeddingAutoencoder(ModelSpec.from_dict(legacy))
    parent = SimpleNamespace(model=parent_model, bundle_id="legacy")  # what warm_weights reads of a bundle
    weights = warm_weights(parent, spec, seed=1)  # type: ignore[arg-type]
    model = EmbeddingAutoencoder(spec)
    model.load_state_dict(weights)  # strict: every tensor of today's shape is there
    old, new = parent_model.state_dict(), model.state_dict()
    for name in ("embeddings.0.weight", "embeddings.1.weight", "cat_heads.1.tail.0.1.weight", "cat_heads.1.tail.1.0.weight"):
        torch.testing.assert_close(new[name], old[name], rtol=0, atol=0)
    # the head: its 256 values and the first cluster's token; the last cluster's first 61,440 values
    torch.testing.assert_close(new["cat_heads.1.head.weight"][:257], old["cat_heads.1.head.weight"][:257], rtol=0, atol=0)
    # each bucket's token: the token of the old cluster that held its values, its share of them in the bias
    for b, (cluster, held, size) in enumerate([(257, 1_024, 61_440)] * 60 + [(258, 1_024, 4_464)] * 4 + [(258, 368, 4_464)]):
        torch.testing.assert_close(new["cat_heads.1.head.weight"][257 + b], old["cat_heads.1.head.weight"][cluster], rtol=0, atol=0)
        torch.testing.assert_close(new["cat_heads.1.head.bias"][257 + b], old["cat_heads.1.head.bias"][cluster] + math.log(held / size))
    torch.testing.assert_close(new["cat_heads.1.tail.1.1.weight"][:61_440], old["cat_heads.1.tail.1.1.weight"], rtol=0, atol=0)
    torch.manual_seed(1)  # the rest keeps the fresh initialisation of the run's seed
    fresh = EmbeddingAutoencoder(spec).state_dict()
    torch.testing.assert_close(new["cat_heads.1.tail.1.1.weight"][61_440:], fresh["cat_heads.1.tail.1.1.weight"][61_440:],
                               rtol=0, atol=0)
    assert not torch.equal(old["embeddings.1.weight"], fresh["embeddings.1.weight"])  # so the copies above are the parent's
    head = model.cat_heads[1]
    assert isinstance(head, AdaptiveHead) and head.n_buckets == 65
    with torch.no_grad():
        hidden = torch.randn(1, head.head.in_features).expand(70_000, -1)
        log_p = head.log_prob_of(hidden, torch.arange(70_000)).double()
        parent_head = cast(AdaptiveHead, parent_model.cat_heads[1])
        parent_log_p = parent_head.log_prob_of(hidden[:4_096], torch.arange(4_096)).double()
        parent_clusters = torch.log_softmax(parent_head.head(hidden[0]).double(), dim=0)[257:]  # [4,096, 65,536), [65,536, n)
    assert abs(torch.logsumexp(log_p, dim=0).item()) < 1e-4
    # it starts where the parent ended, cluster by cluster: the same probability of the head's values and of each
    # old cluster's values together (their spread inside a cluster is the buckets' softmaxes now)
    torch.testing.assert_close(log_p[:4_096], parent_log_p, rtol=0, atol=1e-5)
    for (lo, hi), parent_cluster in zip(((4_096, 65_536), (65_536, 70_000)), parent_clusters, strict=True):
        torch.testing.assert_close(torch.logsumexp(log_p[lo:hi], 0), parent_cluster, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def wide_frame() -> pd.DataFrame:
    """40,000 rows: a `user` column of 2,500 values — 2,000 regular users (~20 rows each) and 500 seen
    once — which determines `group` (user i is in group i % 7), and a numeric."""
    rng = np.random.default_rng(3)
    regular = rng.integers(0, 2_000, 39_500)
    user = np.concatenate([regular, np.arange(2_000, 2_500)])
    rng.shuffle(user)
    return pd.DataFrame({"user": [f"u{u}" for u in user], "group": [f"g{u % 7}" for u in user],
                         "x": rng.normal(size=len(user))})


def small_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns wider than 1,026 rows get a plain cluster [256, 1,024) and the rest in buckets of 256 — the
    shape of a 100,000-value column's head (clusters to 4,096, buckets of 1,024) at a size tests train."""
    monkeypatch.setattr("embedlib.core.model.ADAPTIVE_CUTOFFS", (256, 1_024))
    monkeypatch.setattr("embedlib.core.model.BUCKET", 256)


@pytest.mark.parametrize("buckets", [False, True])
def test_wide_column_trains_and_scores_in_memory(wide_frame: pd.DataFrame, tmp_path: Path, buckets: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if buckets:
        small_buckets(monkeypatch)
    bundle = embedlib.fit(wide_frame, categorical=["user", "group"], numeric=["x"], output_dir=str(tmp_path),
                          settings={"model.adaptive_above": 1_000, "model.size": "small", "vocab.min_count": 1,
                                    "train.max_steps": 600, "train.seed": 1})
    assert bundle.spec.cutoffs_of(0) == ((256, 1_024) if buckets else (256,)) and bundle.spec.cutoffs_of(1) == ()
    assert bundle.spec.buckets == ((256, 0) if buckets else (0, 0))  # 2,502 rows: [1,024, 2,502) in 6 buckets
    assert isinstance(bundle.model.cat_heads[0], AdaptiveHead)
    metrics = bundle.manifest["metrics"]
    user_nll = metrics["history"][-1]["validation_columns"]["user"]
    assert user_nll < np.log(bundle.spec.cardinalities[0]) - 1.0  # it learned that the group narrows the user
    group_nll = metrics["history"][-1]["validation_columns"]["group"]
    assert group_nll < 0.5 * np.log(7)  # and that the user determines the group

    rows = wide_frame.head(500).copy()
    rows.loc[0, "group"] = "g6" if rows.loc[0, "group"] != "g6" else "g5"  # a broken pair
    scores = bundle.score_frame(rows)
    sums = np.array([sum(c.values()) for c in scores["contributions"]])
    np.testing.assert_allclose(sums, scores["anomaly_score"].to_numpy(), atol=1e-9)
    assert scores["contributions"].iloc[0]["group"] > np.median([c["group"] for c in scores["contributions"]])
    with pytest.MonkeyPatch.context() as mp:  # passes of 64 rows give the same numbers as one of 500
        mp.setattr("embedlib.core.model.PASS_ROWS", 64)
        assert bundle.model.pass_rows == 64
        again = bundle.score_frame(rows)
    np.testing.assert_allclose(again["anomaly_score"].to_numpy(), scores["anomaly_score"].to_numpy(), atol=1e-6)
    def categorical_expected(frame: pd.DataFrame) -> list[list[str]]:  # numerics' differ in float32's last digit
        return [[r["expected"] for r in rs if r["column"] != "x"] for rs in frame["reasons"]]

    assert categorical_expected(again) == categorical_expected(scores)
    reasons = [r for rs in scores["reasons"] for r in rs if r["column"] == "user"]
    assert reasons and all(r["expected"] in bundle.vocab["user"].labels() for r in reasons)
    assert all(0.0 < r["probability"] <= 1.0 for r in reasons)


@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_wide_column_trains_with_ddp(spark, wide_frame: pd.DataFrame, tmp_path: Path,  # type: ignore[no-untyped-def]
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two DDP processes (TorchDistributor, gloo) train a model with an adaptive head: DDP reduces every
    parameter's gradient in every step, so each cluster must take part even when no row of a batch
    falls in it (it runs on zero rows). The head has a plain cluster and a bucketed one (small_buckets), and
    the `user` table (2,502 rows, above ``train.lazy_above``) takes sparse gradients, which DDP reduces
    over gloo as indices and values, and the lazy Adam."""
    from embedlib.core.bundle import load_bundle
    from embedlib.core.config import load_config
    from embedlib.spark.train import run_train_job
    from embedlib.spark.vocab import run_vocab_job

    small_buckets(monkeypatch)
    wide_frame.to_parquet(tmp_path / "wide.parquet", index=False)
    cfg = load_config([], [f"output_dir={tmp_path}", f"source.path={tmp_path / 'wide.parquet'}", "source.format=parquet",
                           "columns.categorical=[user, group]", "columns.numeric=[x]", "vocab.min_count=1",
                           "model.adaptive_above=1000", "model.size=small", "train.max_steps=200",
                           "train.lazy_above=1000", "train.backend=torch_distributor", "train.num_workers=2", "train.local_mode=true",
                           "train.use_gpu=false"])
    run_vocab_job(spark, cfg)
    result = run_train_job(spark, cfg)
    assert result.metrics["world_size"] == 2 and result.metrics["steps"] == 200
    if result.metrics["restarts"]:  # a worker died and train.max_restarts launched the run again: said in the summary
        warnings.warn(f"test_wide_column_trains_with_ddp: a worker died and the run restarted "
                      f"{result.metrics['restarts']} time(s); a crash's stack is in the test's captured output",
                      stacklevel=1)
    assert result.metrics["lazy_tables"] == ["user"]
    assert load_bundle(result.bundle_path).spec.buckets == (256, 0)
    assert np.isfinite(result.metrics["validation_loss"])


def test_pass_rows_bound_the_logits_of_a_wide_full_softmax() -> None:
    from embedlib.core.heads import CLUSTER_LOGITS
    from embedlib.core.model import PASS_LOGITS, PASS_ROWS, EmbeddingAutoencoder

    def model(adaptive_above: int | None) -> EmbeddingAutoencoder:
        return EmbeddingAutoencoder(ModelSpec.build(["c", "d"], [100_000, 40], ["x"], hidden=(16, 8), bottleneck=4,
                                                    adaptive_above=adaptive_above))

    assert model(None).pass_rows == PASS_LOGITS // 100_000  # 335 rows × 100,000 logits
    assert model(10_000).pass_rows == PASS_ROWS  # the adaptive head bounds its clusters itself
    head = model(10_000).cat_heads[0]
    assert isinstance(head, AdaptiveHead) and head._chunk(0) == CLUSTER_LOGITS // (4_096 - 256)
    # a bucket's rows take its logits and its slab of output weights (1,024 × the projection's width 1)
    assert head.bucket == 1_024 and head._chunk(1) == CLUSTER_LOGITS // 1_024


@pytest.mark.parametrize("bucket", [0, 12])
def test_chunked_log_prob_equals_the_dense_distribution_with_its_gradients(monkeypatch: pytest.MonkeyPatch,
                                                                           bucket: int) -> None:
    """log_prob_of in many small chunks per cluster (values and gradients, and values without autograd)
    equals the distribution written densely from the head's own layers: log_softmax of the head, plus
    each cluster's (each bucket's) log_softmax behind its token."""
    torch.manual_seed(1)
    n, short = 200, 16
    head = AdaptiveHead(12, n, (short, 60), bucket)  # with buckets: [60, 200) in 12 buckets, the last of 8
    hidden = torch.randn(50, 12)
    # rows in the head and in both clusters, in no order: scoring's path sorts a bucket's rows together
    target = torch.arange(0, 200, 4)[torch.randperm(50)]
    monkeypatch.setattr(AdaptiveHead, "_chunk", lambda self, i: 3)  # ~7 chunks per cluster
    out = head(hidden)
    assert isinstance(out, WideOutput) and out.hidden is hidden
    got = head.log_prob_of(hidden, target)
    head_lp = torch.log_softmax(head.head(hidden), dim=1)
    parts = [head_lp[:, :short]] + [torch.log_softmax(proj(hidden), dim=1) + head_lp[:, short + i, None]
                                    for i, proj in enumerate(head.tail[:head.plain])]
    if bucket:
        parts += [torch.log_softmax(logits, dim=1) + head_lp[:, short + head.plain + b, None]
                  for b, logits in enumerate(head.tail[-1](hidden).split(bucket, dim=1))]
    dense = torch.cat(parts, dim=1)
    assert dense.shape == (50, n)
    want = dense.gather(1, target[:, None]).squeeze(1)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), atol=1e-5)
    grads = torch.autograd.grad(got.sum(), list(head.parameters()))
    dense_grads = torch.autograd.grad(want.sum(), list(head.parameters()))
    for g, d in zip(grads, dense_grads, strict=True):
        np.testing.assert_allclose(g.numpy(), d.numpy(), atol=1e-5)
    with torch.inference_mode():  # scoring's path: each softmax's normaliser computed in place
        np.testing.assert_allclose(head.log_prob_of(hidden, target).numpy(), want.detach().numpy(), atol=1e-5)
