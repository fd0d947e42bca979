"""Batch norm folded into convolutions for inference: the same outputs, over the whole registry."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from breastai.models import create_model, get_spec, list_models
from breastai.models.bnfold import fold_batchnorm


def _with_random_statistics(model: nn.Module) -> nn.Module:
    """Batch norms that are far from the identity, so that a fold that is wrong shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _run(model: nn.Module, x: torch.Tensor, radiomics: torch.Tensor | None):
    out = model(x, radiomics=radiomics) if radiomics is not None else model(x)
    return out if isinstance(out, tuple) else (out,)


# The number of batch norms each registered model folds: every one that follows a convolution
# (DenseNet's others come before theirs, pre-activation; the logistic model has none).
FOLDED = {"densenet121": 59, "radiomics_logreg": 0}


@pytest.mark.parametrize("name", list_models())
def test_folded_model_gives_the_same_outputs(name):
    spec = get_spec(name)
    kwargs = {"backbone": "small_cnn"} if spec.image_module else {}
    model = _with_random_statistics(create_model(name, in_chans=spec.in_chans[-1], pretrained=False, **kwargs))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == FOLDED.get(name, n_bn)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == n_bn - FOLDED.get(name, n_bn)
    torch.manual_seed(1)
    x = torch.rand(2, spec.in_chans[-1], 64, 64)
    r = torch.randn(2, model.radiomics.n_in) if spec.requires_radiomics else None
    with torch.no_grad():
        for a, b in zip(_run(model, x, r), _run(folded, x, r), strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-6)
    # The names hooks look up (saliency target, feature taps) still exist and give the same values.
    for layer in (spec.saliency_layer(kwargs.get("backbone")), *spec.feature_layers(kwargs.get("backbone"))):
        if not layer:
            continue
        seen = []
        for m in (model, folded):
            h = m.get_submodule(layer).register_forward_hook(lambda _m, _i, o: seen.append(o.detach().clone()))
            with torch.no_grad():
                _run(m, x, r)
            h.remove()
        assert torch.allclose(seen[0], seen[1], rtol=1e-4, atol=1e-4 * float(seen[0].abs().max()) + 1e-6), layer


def test_a_kept_convolution_and_training_layers_are_not_folded():
    net = _with_random_statistics(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                                                nn.BatchNorm2d(4)))
    assert fold_batchnorm(copy.deepcopy(net), keep=["0"]) == 1  # the pair after it still folds
    net[4].train()
    assert fold_batchnorm(net) == 1 and isinstance(net[1], nn.Identity) and isinstance(net[4], nn.BatchNorm2d)


def test_a_sequential_with_its_own_forward_is_left_alone():
    class Skip(nn.Sequential):  # adjacency in registration says nothing about data flow here
        def forward(self, x):
            return self[1](x) + self[0](x)

    net = _with_random_statistics(Skip(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    assert fold_batchnorm(net) == 0 and isinstance(net[1], nn.BatchNorm2d)


@pytest.mark.parametrize("which", ["ckpt", "seg_ckpt"])
def test_the_inference_model_is_folded_frozen_channels_last_and_scores_the_same(which, request):
    """``inference_model`` (every scorer's loader) against the checkpoint's plain rebuilt model."""
    from breastai.models.checkpoint import inference_model, model_from_checkpoint
    from breastai.models.checkpoint_io import load_checkpoint

    ck = load_checkpoint(request.getfixturevalue(which))
    plain, fast = model_from_checkpoint(ck), inference_model(ck, "cpu")
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not any(p.requires_grad for p in fast.parameters())
    n_bn = [sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) for net in (plain, fast)]
    assert n_bn[0] > 0 and n_bn[1] < n_bn[0]
    x = torch.rand(2, int(ck.model.create_kwargs().get("in_chans", 1)), 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(_run(plain, x, None), _run(fast, x.contiguous(memory_format=torch.channels_last), None), strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-6)
