"""``train.warm_start`` (``embedlib train --warm-start``): start from a previous bundle's weights.

The parent bundle must model the same columns, and the run's vocabulary must extend the parent's
(``embedlib vocab --update``: every value the parent numbered keeps its index). The model takes the
parent's shape — hidden widths, bottleneck, each column's embedding width, kind, masks, adaptive
threshold — so no size search runs; every weight is copied from the parent: a tensor of the same
shape as is, a tensor with more rows (an embedding table or an output head of a column that gained
values) in its first rows, the new rows keeping their fresh initialisation. Embedding identities
therefore stay stable across retraining, and training starts where the parent ended.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import torch

from embedlib.core.layout import join, read_text
from embedlib.core.model import AdaptiveHead, EmbeddingAutoencoder, ModelSpec
from embedlib.core.train.errors import TrainError
from embedlib.core.train.sizing import SIZES

if TYPE_CHECKING:
    from embedlib.core.bundle import Bundle
    from embedlib.core.config import ModelConfig
    from embedlib.core.vocab.model import Vocabulary

__all__ = ["load_parent", "parent_model_config", "warm_weights"]

log = logging.getLogger(__name__)


def load_parent(path: str) -> Bundle:
    """The bundle at ``path``: a bundle folder, or a run folder holding ``bundle/``."""
    from embedlib.core.bundle import MANIFEST, load_bundle

    if read_text(join(path, MANIFEST)) is None and read_text(join(path, "bundle", MANIFEST)) is not None:
        path = join(path, "bundle")
    return load_bundle(path)


def parent_model_config(parent: Bundle, vocab: Vocabulary, model: ModelConfig, columns: tuple[tuple[str, ...],
                        tuple[str, ...]]) -> ModelConfig:
    """The configuration that rebuilds the parent's shape for ``vocab``, after checking the parent
    models ``columns`` (categorical, numeric) and ``vocab`` extends its vocabulary."""
    spec = parent.spec
    if (spec.categorical, spec.numeric) != columns:
        raise TrainError(
            f"train.warm_start: bundle {parent.path} models categorical {list(spec.categorical)} and numeric "
            f"{list(spec.numeric)}, this run categorical {list(columns[0])} and numeric {list(columns[1])}; warm "
            "start needs the same columns — train this run cold (unset train.warm_start)"
        )
    for name in spec.categorical:
        old, new = parent.vocab[name].values, vocab[name].values
        if new[: len(old)] != old:
            moved = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b) if len(new) >= len(old) \
                else len(new)
            raise TrainError(
                f"train.warm_start: column '{name}': the run's vocabulary does not extend bundle {parent.path}'s "
                f"(index {moved + 2} is {old[moved]!r} there and "
                f"{new[moved] if moved < len(new) else 'absent'!r} here); update the parent's vocabulary with "
                "`embedlib vocab --update` instead of rebuilding it, or train cold"
            )
    saved = parent.manifest.get("model_config", {})
    size = parent.manifest.get("metrics", {}).get("model_size")
    return dataclasses.replace(
        model, size=size if size in SIZES else "medium", hidden=spec.hidden, bottleneck=spec.bottleneck,
        max_embedding_dim=max(spec.embedding_dims, default=1),
        embedding_dims=dict(zip(spec.categorical, spec.embedding_dims, strict=True)),
        kind=spec.kind,  # type: ignore[arg-type]
        numeric_head=spec.numeric_head,  # type: ignore[arg-type]
        masks=saved.get("masks", model.masks), adaptive_above=saved.get("adaptive_above", model.adaptive_above),
    )


def warm_weights(parent: Bundle, spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Initial weights of ``spec``: the parent's where they fit (see the module docstring)."""
    torch.manual_seed(seed)
    fresh = EmbeddingAutoencoder(spec).state_dict()
    old = parent.model.state_dict()
    copied, grown, kept = 0, 0, []
    for name, value in fresh.items():
        prior = old.get(name)
        if prior is None:
            kept.append(name)
            continue
        if prior.shape == value.shape:
            fresh[name] = prior.clone()
            copied += 1
        elif prior.dim() == value.dim() and prior.shape[1:] == value.shape[1:] and prior.shape[0] <= value.shape[0]:
            fresh[name][: prior.shape[0]] = prior
            grown += 1
        else:
            kept.append(name)
    for i, head in enumerate(parent.model.cat_heads):
        if isinstance(head, AdaptiveHead) and not head.bucket and spec.bucket_of(i):
            _bucket_tokens(head, spec.cutoffs_of(i), spec.bucket_of(i), fresh, f"cat_heads.{i}.head")
    log.info("warm start from bundle %s: %d tensor(s) copied, %d grown by new rows, %d new%s", parent.bundle_id,
             copied, grown, len(kept), f" ({', '.join(kept)})" if kept else "")
    return fresh


def _bucket_tokens(old: AdaptiveHead, cutoffs: tuple[int, ...], bucket: int, weights: dict[str, torch.Tensor],
                   name: str) -> None:
    """The bucket tokens of a head with ``cutoffs`` and ``bucket`` (``weights[name + '.weight' | '.bias']``,
    where the parent's rows were copied by position) from a parent ``old`` written before buckets, whose
    clusters past the first are each one softmax: each bucket takes the token of the parent's cluster that
    held its first value, the bias lowered by ``log(values of the bucket the cluster held ÷ the cluster's
    values)`` — the cluster's probability shared out evenly over its buckets. A bucket of values the
    parent never had keeps its fresh initialisation."""
    weight, bias = weights[f"{name}.weight"], weights[f"{name}.bias"]
    bounds, first = old.bounds, cutoffs[0] + len(cutoffs) - 1  # the parent's clusters; the first bucket's token
    with torch.no_grad():
        for b in range(weight.shape[0] - first):
            lo = cutoffs[-1] + b * bucket
            j = next((j for j in range(len(bounds) - 1) if bounds[j] <= lo < bounds[j + 1]), None)
            if j is None:  # values past the parent's last
                continue
            held = min(lo + bucket, bounds[j + 1]) - lo
            weight[first + b] = old.head.weight[bounds[0] + j]
            bias[first + b] = old.head.bias[bounds[0] + j] + math.log(held / (bounds[j + 1] - bounds[j]))
