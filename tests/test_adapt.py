"""Batch-norm statistics from a new site's images (``breastai.engine.adapt``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from breastai.data.frames import read_samples
from breastai.engine.adapt import _even_batch_size, adapted_checkpoint, batchnorm_statistics
from breastai.engine.loaders import build_dataset
from breastai.engine.loops import collate
from breastai.models.checkpoint import load_checkpoint, model_from_checkpoint


def test_batches_are_split_evenly():
    assert _even_batch_size(33, 32) == 17  # 17 + 16, not 32 + 1
    assert _even_batch_size(64, 32) == 32
    assert _even_batch_size(5, 32) == 5


@pytest.fixture(scope="module")
def site(ckpt, synth_datalist):
    c = load_checkpoint(ckpt)
    return c, read_samples(synth_datalist, c.config["data"], c.classes)


def test_statistics_are_those_of_the_site_and_nothing_else_changes(site):
    c, records = site
    stats = batchnorm_statistics(c, records, torch.device("cpu"), batch_size=len(records))  # one batch: exact
    model = model_from_checkpoint(c).eval()
    first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    first[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    batch = collate([build_dataset(c.config, records, False)[i] for i in range(len(records))])
    with torch.no_grad():
        model(batch["image"])
    x = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1).double()
    np.testing.assert_allclose(stats[f"{first[0]}.running_mean"].double(), x.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[f"{first[0]}.running_var"].double(), x.var(1, unbiased=True), rtol=1e-3, atol=1e-5)
    # the site's statistics differ from the training ones, and only the buffers move
    assert not torch.allclose(stats[f"{first[0]}.running_mean"], c.weights[f"{first[0]}.running_mean"])
    adapted = adapted_checkpoint(c, stats)
    changed = {k for k in c.weights if not torch.equal(c.weights[k], adapted.weights[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert set(stats) == {k for k in c.weights if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_labels_are_not_read(site):
    c, records = site
    a = batchnorm_statistics(c, records, torch.device("cpu"))
    flipped = [{**r, "label": 1 - r["label"] if isinstance(r["label"], int) else r["label"]} for r in records]
    b = batchnorm_statistics(c, flipped, torch.device("cpu"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refusals(site):
    c, records = site
    with pytest.raises(ValueError, match="at least 2 images"):
        batchnorm_statistics(c, records[:1], torch.device("cpu"))
    with pytest.raises(KeyError, match="does not have"):
        adapted_checkpoint(c, {"nope.running_mean": torch.zeros(1)})
