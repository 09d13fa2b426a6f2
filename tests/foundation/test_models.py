import pytest
import torch
from torch import nn

from semsim_audit.attacks import DataSpec
from semsim_audit.models import MODELS, build_model, model_for


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels, classes", [(1, 2), (3, 7)])
def test_every_model_fits_any_channels_and_classes(name, channels, classes):
    model = build_model(name, in_channels=channels, num_classes=classes)
    logits = model(torch.randn(2, channels, 32, 32))
    assert logits.shape == (2, classes)


def test_lenet_is_the_dlg_lenet():
    model = build_model("lenet", uniform_init=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 12, (5, 5), (2, 2)), (12, 12, (5, 5), (2, 2)), (12, 12, (5, 5), (1, 1))]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    assert model.classifier.in_features == 768
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float(values.min()) >= -0.5 and float(values.max()) <= 0.5
    assert float(values.std()) > 0.25  # uniform(-0.5, 0.5) has std 0.289; default init is far smaller


def test_resnet18_is_adapted_to_32px():
    model = build_model("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=0.01)
    narrow = build_model("resnet18", width=16)
    assert narrow.fc.in_features == 128


def test_convnet_width_and_batch_norm_options():
    plain = build_model("convnet", width=8)
    with_bn = build_model("convnet", width=8, batch_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 4
    assert plain.features[0].out_channels == 8


def test_model_for_uses_the_spec():
    spec = DataSpec(shape=(1, 32, 32), num_classes=2, mean=(0.5,), std=(0.5,))
    assert model_for("convnet", spec)(torch.randn(1, 1, 32, 32)).shape == (1, 2)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*convnet.*lenet.*resnet18"):
        build_model("vgg")
