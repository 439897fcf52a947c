"""The networks of the lab: Conv-4, ResNet-12, the embedding net and the classifiers."""

import pytest
import torch

from losslab.lab.backbones import (
    CLASSIFIERS,
    Conv4,
    EmbeddingNet,
    ResNet12,
    SmallCNN,
    build_backbone,
    build_classifier,
    embedding_dim,
)


def test_conv4_dims():
    assert embedding_dim(Conv4(1), 1, 28) == 64
    assert embedding_dim(Conv4(3), 3, 84) == 64
    assert embedding_dim(Conv4(3, flatten=True), 3, 84) == 1600
    assert embedding_dim(Conv4(1, flatten=True), 1, 28) == 64


def test_resnet12_forward_and_backward():
    m = ResNet12(3)
    y = m(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 512)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError):
        build_backbone("resnet12", 3, flatten=True)
    with pytest.raises(ValueError):
        build_backbone("vgg", 3)


def test_embedding_net_head_and_normalisation():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    net = EmbeddingNet(Conv4(1), 64, 16, normalize=True)
    z = net(x)
    assert z.shape == (3, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    bare = EmbeddingNet(Conv4(1), 64, 0, normalize=False)
    assert isinstance(bare.head, torch.nn.Identity) and bare(x).shape == (3, 64)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_classifiers_shapes_and_gradients(name, channels, size):
    torch.manual_seed(0)
    model = build_classifier(name, channels, size, 10)
    out = model(torch.randn(4, channels, size, size))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    if name == "cnn":
        assert isinstance(model, SmallCNN)
    with pytest.raises(ValueError, match="model must be one of"):
        build_classifier("vgg", channels, size, 10)

