"""Every model in the registry × input shape × quantizer, and parameter counts (daqkd/models/)."""

import pytest
import torch

from daqkd.kd import feature_shapes
from daqkd.models import create_model, default_feature_layers
from daqkd.quant import (
    calibrate,
    quant_layers,
    quantize_model,
)
from daqkd.registry import list_models

SHAPES = [(1, 28, 10), (3, 32, 100), (3, 64, 200)]  # (channels, size, classes)


def test_registry_lists_the_papers_models():
    assert set(list_models()) >= {"resnet20", "resnet32", "resnet56", "resnet18", "vgg8", "vgg13", "mobilenetv2"}
    with pytest.raises(ValueError, match="unknown model 'resnet99'; available: .*resnet20"):
        create_model("resnet99", 10)

@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels,size,classes", SHAPES)
def test_logits_shape_and_feature_taps(name, channels, size, classes):
    x = torch.randn(2, channels, size, size)
    model = create_model(name, classes, channels, image_size=size).eval()
    assert model(x).shape == (2, classes)
    shapes = feature_shapes(model, default_feature_layers(name), x)  # the declared KD taps exist
    assert len(shapes) == len(default_feature_layers(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels,size,classes", SHAPES)
def test_quantizes_with_every_quantizer(name, channels, size, classes, quantizer_factories):
    x = torch.randn(2, channels, size, size)
    for q, (wq, aq, scale) in quantizer_factories.items():
        student = quantize_model(create_model(name, classes, channels, image_size=size), wq, aq, 2, 2, "fp", scale)
        assert sum(1 for _ in quant_layers(student)) > 0, q
        calibrate(student, x)
        out = student.eval()(x)
        assert out.shape == (2, classes) and torch.isfinite(out).all(), q


def params(name, classes, channels=3, size=32):
    return sum(p.numel() for p in create_model(name, classes, channels, image_size=size).parameters())

@pytest.mark.parametrize(
    "name,classes,size,published",
    [
        ("resnet20", 10, 32, 0.27e6),  # He et al. 2016, Table 6
        ("resnet32", 10, 32, 0.46e6),
        ("resnet56", 10, 32, 0.85e6),
        ("resnet18", 1000, 224, 11.69e6),  # He et al. 2016 / torchvision resnet18 (11,689,512)
        ("resnet18", 100, 32, 11.2e6),  # the CIFAR-stem ResNet-18 of the KD literature at 100 classes
        ("mobilenetv2", 1000, 224, 3.504872e6),  # torchvision mobilenet_v2, to the parameter
        ("vgg8", 100, 32, 3.96e6),  # CRD/RepDistiller vgg8 (BN) on CIFAR-100
        ("vgg13", 100, 32, 9.46e6),  # CRD/RepDistiller vgg13 (BN) on CIFAR-100
    ],
)
def test_parameter_counts_match_published(name, classes, size, published):
    assert abs(params(name, classes, size=size) - published) / published < 0.02

def test_mobilenetv2_and_resnet18_equal_torchvision_exactly():
    import torchvision

    assert params("mobilenetv2", 1000, size=224) == sum(p.numel() for p in torchvision.models.mobilenet_v2().parameters())
    assert params("resnet18", 1000, size=224) == sum(p.numel() for p in torchvision.models.resnet18().parameters())

def test_resnet18_stem_follows_input_size():
    assert create_model("resnet18", 10, 3, image_size=64).conv1.kernel_size == (7, 7)
    assert create_model("resnet18", 10, 3, image_size=32).conv1.kernel_size == (3, 3)
