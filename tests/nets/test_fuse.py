"""nets.fuse: a Sequential run with batch norms folded and activation/pooling swapped gives what PyTorch's own
modules give, in eval mode, with frozen norms in a training network, and for the gradients."""

import copy

import pytest
import torch
from torch import nn

from segdet.nets.fuse import cache_block, foldable, fused_forward
from segdet.nets.yolo import YOLOv1


def _randomise_norms(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.1, inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16, affine=False), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(16, 4, 1), nn.LeakyReLU(0.1))  # a conv with no norm after it runs as it is


@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_mode_equals_the_modules(channels_last):
    net = _net()
    _randomise_norms(net)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = net(x.clone())
        got = fused_forward(net, x.clone())
    assert got.shape == expected.shape == (4, 4, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_activation_and_pooling_swap_is_exact():
    seq = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    x = torch.randn(2, 5, 16, 16)
    assert torch.equal(fused_forward(seq, x.clone()), seq(x.clone()))


def test_training_norms_use_batch_statistics_and_update_running_ones():
    net = _net().train()
    twin = copy.deepcopy(net)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fused_forward(net, x.clone()), twin(x.clone()), rtol=1e-5, atol=1e-5)
    for a, b in zip(net.modules(), twin.modules(), strict=True):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean)
            assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1


@pytest.mark.parametrize("frozen, blocked", [(3, False), (1, True), (3, True)])
def test_frozen_yolo_backbone_gives_the_same_outputs_and_gradients(monkeypatch, frozen, blocked):
    """A YOLOv1 training step with the first backbone convolutions frozen (what yolo_train does after the R-CNN
    transfer): the folded forward, its frozen layers run image by image when blocked, against the plain
    module-by-module one."""
    import segdet.nets.yolo as yolo_module

    torch.manual_seed(0)
    model = YOLOv1("small", 3, input_size=64, head_channels=16, hidden=32)
    _randomise_norms(model)
    model.freeze_backbone(frozen)
    model.train()
    x = torch.randn(3, 3, 64, 64)
    twin = copy.deepcopy(model)
    calls = []
    if blocked:  # one image's first-layer output (16 x 64 x 64 floats) per block
        monkeypatch.setattr(yolo_module, "FROZEN_BLOCK_BYTES", 16 * 64 * 64 * 4)
        inner = yolo_module.fused_forward
        monkeypatch.setattr(yolo_module, "fused_forward",
                            lambda seq, t, start=0, stop=None: calls.append((len(t), start, stop)) or inner(seq, t, start, stop))
    out = model(x)
    if blocked:  # the frozen layers and the pooling after them (4 modules a convolution) image by image, then the rest
        prefix = 4 * frozen
        assert calls[:4] == [(1, 0, prefix)] * 3 + [(3, prefix, None)]
    ref = twin.fc(twin.head(twin.features(x))).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        if p.requires_grad:
            # float rounding of the folded weights: within 1e-4 of the gradient's scale
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4 * float(q.grad.abs().max()), msg=name)
        else:
            assert p.grad is None and q.grad is None, name
    assert model.state_dict().keys() == twin.state_dict().keys()


def test_sync_batch_norms_under_torchrun_fold_too():
    """Under torchrun the training stages convert batch norms to SyncBatchNorm; in eval mode they fold the same."""
    net = _net()
    _randomise_norms(net)
    net.eval()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(net)).eval()
    assert isinstance(synced[1], nn.SyncBatchNorm) and foldable(synced[0], synced[1])
    assert not foldable(synced[0], synced[1].train())  # batch statistics while training: never folded
    synced.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused_forward(synced, x.clone()), net(x.clone()), rtol=1e-5, atol=1e-5)


def test_cache_block_is_the_power_of_two_of_inputs_whose_output_fits():
    conv = nn.Conv2d(3, 16, 3, padding=1)
    # 16 x 256 x 256 x 4 B = 4 MiB an image: 8 MiB holds 2, 9 MiB still 2, 4 MiB 1, 1 MiB none (at least 1)
    assert [cache_block(conv, 256, 4, mib * 2**20) for mib in (8, 9, 4, 1, 64)] == [2, 2, 1, 1, 16]
    assert cache_block(conv, 256, 4, 2**20, smallest=2) == 2
    # stride 2, padding 1: a 64 px input gives 32 x 32 outputs, 16 x 32 x 32 x 2 B (bfloat16) = 32 KiB each
    assert cache_block(nn.Conv2d(3, 16, 3, stride=2, padding=1), 64, 2, 2**20) == 32
