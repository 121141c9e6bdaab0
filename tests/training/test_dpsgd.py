"""DP-SGD machinery: calibration, every per-example gradient mode against a one-example-at-a-time loop, and
each layer rule of book-keeping clipping against per-example autograd in float64 (as Opacus tests its grad
samplers)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from dpmedbench.training.dpsgd.accounting import calibrate_noise, epsilon
from dpmedbench.training.dpsgd.bookkeeping import (
    LAYER_RULES,
    BookKeeping,
    conv_uses_ghost,
    per_example_conv_grads,
    rule_for,
    unfold,
)
from dpmedbench.training.dpsgd.gradsample import GRAD_SAMPLE_MODES, make_grad_sampler
from dpmedbench.training.dpsgd.step import make_optimizer, noisy_step
from dpmedbench.training.models import build_resnet18

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_calibrated_noise_meets_the_target():
    for beta in (1.0, 2.0, 4.0):
        sigma = calibrate_noise(
            target_epsilon=1 / beta, delta=1e-4, sample_rate=128 / 4700, steps=37 * 50, accountant="prv"
        )
        eps = epsilon([(sigma, 128 / 4700, 37 * 50)], delta=1e-4, accountant="prv")
        assert 1 / beta - 0.02 < eps <= 1 / beta + 1e-9, (beta, sigma, eps)
        assert epsilon([(sigma, 128 / 4700, 37 * 50)], delta=1e-4, accountant="rdp") > eps


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_with_zero_noise_every_mode_clips_like_the_reference(mode):
    """sigma = 0: the update must be the sum of per-example gradients, each clipped to C, over the expected
    batch size, exactly as a one-example-at-a-time loop computes it (float64), across two physical chunks."""
    torch.manual_seed(0)
    base = build_resnet18(num_classes=3, weights=None, norm="group").double()
    x = torch.randn(6, 3, 20, 20, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    clip, expected_batch = 0.5, 8
    ref = copy.deepcopy(base)
    params = [p for p in ref.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    clipped = 0
    for i in range(len(x)):
        ref.zero_grad()
        F.cross_entropy(ref(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in params]
        norm = torch.sqrt(sum((g**2).sum() for g in grads)).item()
        clipped += norm > clip
        for t, g in zip(total, grads, strict=True):
            t += min(1.0, clip / (norm + 1e-6)) * g
    assert clipped >= 3, "the test must exercise clipping"
    model = copy.deepcopy(base)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    _, sample = make_grad_sampler(model, mode, max_grad_norm=clip)
    opt = make_optimizer(
        model,
        lr=1.0,
        momentum=0,
        weight_decay=0,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
        generator=torch.Generator().manual_seed(0),
        grad_sample_mode=mode,
    )
    noisy_step(opt, sample, model, [torch.arange(4), torch.arange(4, 6)], lambda idx: (x[idx], y[idx]))
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    for a, b, t in zip(after, before, total, strict=True):
        torch.testing.assert_close(a - b, -t / expected_batch, rtol=1e-9, atol=1e-12)


def test_book_keeping_noises_exactly_like_opacus():
    """sigma > 0: with the same generator, 'bk' and Opacus's 'ew' make the same noisy update (same clip factors,
    the same noise drawn for the same parameters in the same order), so the accountant's guarantee carries over."""
    torch.manual_seed(1)
    base = build_resnet18(num_classes=2, weights=None, norm="group").double()
    x, y = torch.randn(5, 3, 24, 24, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])
    updates = {}
    for mode in ("ew", "bk"):
        model = copy.deepcopy(base)
        before = [p.detach().clone() for p in model.parameters()]
        _, sample = make_grad_sampler(model, mode, max_grad_norm=0.3)
        opt = make_optimizer(
            model,
            lr=1.0,
            momentum=0,
            weight_decay=0,
            noise_multiplier=1.3,
            max_grad_norm=0.3,
            expected_batch_size=4,
            generator=torch.Generator().manual_seed(7),
            grad_sample_mode=mode,
        )
        noisy_step(opt, sample, model, [torch.arange(5)], lambda idx: (x[idx], y[idx]))
        updates[mode] = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    for a, b in zip(updates["ew"], updates["bk"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(float(u.abs().sum()) for u in updates["bk"]) > 1.0  # the noise is really there


def test_book_keeping_takes_the_cheaper_norm_route_per_layer():
    """At 224 px the early convolutions (many positions) instantiate per-example gradients and the late ones
    (few positions, many weights) use ghost norms; at the 20 px of the zero-noise test above both routes run."""

    model = build_resnet18(num_classes=2, weights=None, norm="group")
    assert not conv_uses_ghost(model.conv1, 112 * 112)
    assert not conv_uses_ghost(model.layer1[0].conv1, 56 * 56)
    assert conv_uses_ghost(model.layer3[1].conv2, 14 * 14)
    assert conv_uses_ghost(model.layer4[0].conv2, 7 * 7)
    assert not conv_uses_ghost(model.conv1, 10 * 10) and conv_uses_ghost(model.layer1[0].conv1, 5 * 5)
    with pytest.raises(ValueError, match="needs max_grad_norm"):
        make_grad_sampler(model, "bk")
    with pytest.raises(ValueError, match="does not support trainable BatchNorm2d"):
        make_grad_sampler(build_resnet18(num_classes=2, weights=None, norm="batch"), "bk", max_grad_norm=1.0)


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False),
        torch.nn.Conv2d(4, 5, 3, stride=1, padding=2, dilation=2),
        torch.nn.Conv2d(4, 6, 1, stride=2, bias=False),
        torch.nn.Conv2d(3, 2, (3, 5), stride=(2, 1), padding=(0, 2)),
    ],
    ids=["stem", "dilated", "downsample", "rectangular"],
)
def test_both_per_example_conv_routes_give_each_examples_own_gradient(conv):
    """The per-example weight gradients of 'bk' (one conv2d_weight per example on the CPU; one bmm over the
    unfolded input elsewhere) equal the gradient of each example's loss alone, computed by autograd."""

    torch.manual_seed(3)
    conv = conv.double()
    a = torch.randn(3, conv.in_channels, 13, 11, dtype=torch.float64)
    out = conv(a)
    g = torch.randn_like(out)
    expected = []
    for i in range(len(a)):
        conv.zero_grad()
        (conv(a[i : i + 1]) * g[i : i + 1]).sum().backward()
        expected.append(conv.weight.grad.flatten(1).clone())
    for batched in (False, True):
        got = per_example_conv_grads(conv, a, g.detach(), batched=batched)
        torch.testing.assert_close(got, torch.stack(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False),
        torch.nn.Conv2d(4, 5, 3, stride=1, padding=2, dilation=2),
        torch.nn.Conv2d(4, 6, 1, stride=2, bias=False),
        torch.nn.Conv2d(3, 2, (3, 5), stride=(2, 1), padding=(0, 2)),
    ],
    ids=["stem", "dilated", "downsample", "rectangular"],
)
def test_strided_unfold_equals_torchsunfold(conv):
    """The GPU route's unfold (one copy of a strided view) gives exactly F.unfold's numbers, whatever the memory
    layout of the input."""

    a = torch.randn(3, conv.in_channels, 13, 11)
    for x in (a, a.contiguous(memory_format=torch.channels_last), a[:, :, 1:, :]):
        expected = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        assert torch.equal(unfold(x, conv, strided=True), expected)
        assert torch.equal(unfold(x, conv), expected)


def test_book_keeping_refuses_paddings_it_would_get_wrong():
    for conv in (torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), torch.nn.Conv2d(3, 4, 3, padding="same")):
        with pytest.raises(ValueError, match="numeric zero padding only"):
            make_grad_sampler(torch.nn.Sequential(conv), "bk", max_grad_norm=1.0)


def test_book_keeping_clips_biased_convolutions_exactly():
    """'bk' on layers ResNet-18 lacks: convolutions with bias (both norm routes), dilation and stride, before
    GroupNorm and a Linear head. Its clipped sums equal a one-example-at-a-time loop's (float64)."""

    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),  # per-example route (many positions, few weights)
        torch.nn.GroupNorm(4, 16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 64, 3, stride=2, dilation=2, padding=2),  # ghost route (few positions, many weights)
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    ).double()
    assert not conv_uses_ghost(model[0], 10 * 10) and conv_uses_ghost(model[3], 5 * 5)
    x, y = torch.randn(5, 3, 10, 10, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    clip = 0.4
    params = list(model.parameters())
    expected = [torch.zeros_like(q) for q in params]
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.sqrt(sum((q.grad**2).sum() for q in params)).item()
        for e, q in zip(expected, params, strict=True):
            e += min(1.0, clip / (norm + 1e-6)) * q.grad
    model.zero_grad(set_to_none=True)
    BookKeeping(model, max_grad_norm=clip)(x, y)
    for e, q in zip(expected, params, strict=True):
        torch.testing.assert_close(q.clipped_sum, e, rtol=1e-9, atol=1e-12)
        assert q.grad is None  # 'bk' never fills .grad


def _per_example_autograd(module: torch.nn.Module, a: torch.Tensor, g: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each example's gradient of <module(a_i), g_i> with respect to the module's parameters, one at a time."""
    grads = []
    for i in range(len(a)):
        module.zero_grad(set_to_none=True)
        (module(a[i : i + 1]) * g[i : i + 1]).sum().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    return grads


@pytest.mark.parametrize(
    ("layer", "shape", "route"),
    [
        (torch.nn.Linear(5, 3), (5,), None),
        (torch.nn.Linear(5, 3, bias=False), (5,), None),
        (torch.nn.GroupNorm(2, 4), (4, 5, 5), None),
        (torch.nn.Conv2d(3, 4, 3, padding=1), (3, 10, 10), "per-example"),
        (torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), (3, 10, 10), "per-example"),
        (torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), (16, 6, 6), "ghost"),
        (torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), (16, 6, 6), "ghost"),
        (torch.nn.Conv2d(16, 32, 3, padding=2, dilation=2), (16, 4, 5), "ghost"),
    ],
    ids=[
        "linear",
        "linear-nobias",
        "groupnorm",
        "conv-per-example",
        "conv-per-example-nobias",
        "conv-ghost",
        "conv-ghost-nobias",
        "conv-ghost-dilated",
    ],
)
def test_each_layer_rule_matches_per_example_autograd(layer, shape, route):
    """A layer rule's squared norms and clipped sums equal those of each example's own gradient (float64)."""
    torch.manual_seed(11)
    layer = layer.double()
    a = torch.randn(4, *shape, dtype=torch.float64)
    if isinstance(layer, torch.nn.GroupNorm):  # non-trivial affine parameters, so the gradient is not generic
        torch.nn.init.normal_(layer.weight)
        torch.nn.init.normal_(layer.bias)
    g = torch.randn_like(layer(a))
    if route is not None:
        assert conv_uses_ghost(layer, g.shape[2] * g.shape[3]) == (route == "ghost")
    expected = _per_example_autograd(layer, a, g)
    rule = rule_for(layer)
    rule.check(layer)
    reused, norms2 = rule.norms(layer, a, g.detach())
    torch.testing.assert_close(
        norms2, torch.stack([sum((q**2).sum() for q in ex) for ex in expected]), rtol=1e-10, atol=1e-12
    )
    clip = torch.tensor([1.0, 0.5, 0.0, 0.25], dtype=torch.float64)
    sums = rule.clipped_sums(layer, a, g.detach(), reused, clip)
    assert len(sums) == len(list(layer.parameters()))
    for k, got in enumerate(sums):
        want = sum(c * ex[k] for c, ex in zip(clip, expected, strict=True))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_layer_rules_are_found_by_type_and_unknown_trainable_layers_refused():
    assert set(LAYER_RULES) >= {torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm}

    class MyConv(torch.nn.Conv2d):
        pass

    assert rule_for(MyConv(1, 1, 1)) is LAYER_RULES[torch.nn.Conv2d]
    with pytest.raises(ValueError, match="does not support trainable LayerNorm"):
        BookKeeping(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3)), max_grad_norm=1.0)
    with pytest.raises(ValueError, match="ungrouped convolutions only"):
        BookKeeping(torch.nn.Conv2d(4, 4, 3, groups=2), max_grad_norm=1.0)


def test_noisy_step_noises_an_empty_batch_and_keeps_the_update_in_grad():
    """An empty Poisson batch is a step like any other: noise, scaled by the expected batch size."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    _, sample = make_grad_sampler(model, "bk", max_grad_norm=1.0)
    opt = make_optimizer(
        model,
        lr=0.0,
        momentum=0,
        weight_decay=0,
        noise_multiplier=2.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        generator=torch.Generator().manual_seed(0),
    )
    out = noisy_step(opt, sample, model, [torch.arange(0)], lambda idx: (torch.zeros(0, 4), torch.zeros(0)))
    assert out == []
    grad = model[1].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0  # noise of std 2 * 1 / 4 per coordinate


# ------------------------------------------------------------------------------------- speed: precision, layout
def _clipped_sums(model, x, y, clip, **kw):
    """The clipped sums of a fresh 'bk' sampler on ``model`` (a sampler adds to what a parameter holds)."""
    for q in model.parameters():
        q.clipped_sum = None
    BookKeeping(model, max_grad_norm=clip, **kw)(x, y)
    return [q.clipped_sum.clone() for q in model.parameters()]


def test_bf16_autocast_keeps_the_clipping_bound_in_float32():
    """Under bfloat16 autocast (on the CPU too) the forward and backward passes run in bf16, but each example's
    clipped gradient, computed from float32 copies of its records, stays within C to float32 precision, and the
    clipped sums are float32."""
    torch.manual_seed(3)
    model = build_resnet18(num_classes=2, weights=None, norm="group")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    clip = 1e-3  # far below every example's norm: every example is clipped, so each must land on C
    seen = []
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    for i in range(len(x)):
        sums = _clipped_sums(model, x[i : i + 1], y[i : i + 1], clip, autocast_dtype=torch.bfloat16)
        assert all(s.dtype == torch.float32 for s in sums)
        norm = torch.sqrt(sum((s.double() ** 2).sum() for s in sums)).item()
        assert clip * (1 - 1e-4) < norm <= clip * (1 + 1e-5), norm / clip
    assert seen and all(d == torch.bfloat16 for d in seen), "autocast must have run the convolutions in bf16"
    # Each example's clipped gradient is that of plain autograd under the same autocast, clipped in float32 (bf16
    # itself moves this random network's gradient by about 25 % from float32's, autograd and 'bk' alike).
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(model(x[i : i + 1]).float(), y[i : i + 1]).backward()
        grad = torch.cat([q.grad.flatten() for q in model.parameters()])
        want = grad * min(1.0, 1.0 / (grad.norm().item() + 1e-6))
        got = torch.cat(
            [s.flatten() for s in _clipped_sums(model, x[i : i + 1], y[i : i + 1], 1.0, autocast_dtype=torch.bfloat16)]
        )
        assert (got - want).norm() / want.norm() < 1e-2


def test_other_modes_refuse_bf16_autocast():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"only 'bk' keeps them in float32 under autocast"):
        make_grad_sampler(model, "ew", max_grad_norm=1.0, autocast_dtype=torch.bfloat16)


def test_channels_last_changes_no_clipped_sum():
    torch.manual_seed(4)
    model = build_resnet18(num_classes=3, weights=None, norm="group").double()
    x, y = torch.randn(5, 3, 24, 24, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    plain = _clipped_sums(model, x, y, 0.5)
    model.to(memory_format=torch.channels_last)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = _clipped_sums(model, x.contiguous(memory_format=torch.channels_last), y, 0.5)
    for a, b in zip(plain, nhwc, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
