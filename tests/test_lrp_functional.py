"""LRP through functional code and modules without rules: layout operations,
normalisation over any axis, attention (fused and not), products, unfoldable
BatchNorm, in-place activations; each against its closed form or by exact
conservation on bias-free versions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, snapshot
from torch import nn

from captum_similarity.lrp import Composite, Epsilon, LRPEngine, NormRule, Pass
from captum_similarity.lrp.rules import LINEAR_TYPES

DT = torch.float64
LRP0 = dict(layer_rules={LINEAR_TYPES: Epsilon(0.0)})


def _relevance(model, x, seed, record=(), target=None, **composite):
    p = LRPEngine(model, Composite(**(composite or LRP0))).forward(x, record=record)
    return p, p.propagate(seed, target=target)


def _gradient_times_input(model, x, seed):
    """LRP-0 of a bias-free piecewise-linear network: x * d(sum(seed / y * y))/dx."""
    xg = x.clone().requires_grad_(True)
    y = model(xg)
    (grad,) = torch.autograd.grad(y, xg, seed / y.detach())
    return xg.detach() * grad


# -- layout operations and identities ---------------------------------------------


class Permute(nn.Module):  # torchvision.ops.misc.Permute, a leaf without a rule
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(self.dims)


class StochasticDepth(nn.Module):  # an identity in eval mode
    def forward(self, x):
        return x if not self.training else x * 0.5


class Shuffle(nn.Module):  # roll, pad, narrow, cat, stack, flip, contiguous, reshape
    def forward(self, x):
        x = torch.roll(x, shifts=(1, -1), dims=(1, 2))
        x = F.pad(x, (0, 0, 1, 1))
        x = x.narrow(2, 1, x.shape[2] - 2)
        x = torch.cat([x[..., :2], x.flip(-1)[..., :2]], dim=-1)
        x = torch.stack([x, x.transpose(1, 2).transpose(1, 2)], dim=0).sum(0) * 0.5
        return x.contiguous().reshape(x.shape)


class Layout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.to_last = Permute((0, 2, 3, 1))
        self.drop = StochasticDepth()
        self.shuffle = Shuffle()
        self.fc = nn.Linear(4, 5, bias=False)
        self.to_first = Permute((0, 3, 1, 2))

    def forward(self, x):
        x = self.shuffle(self.drop(self.to_last(self.conv(x))))
        return self.to_first(self.fc(x)).mean((2, 3))


def test_layout_operations_and_eval_identities_pass_relevance_exactly(images):
    torch.manual_seed(0)
    model = Layout().to(DT).eval()
    x = images(2, size=8)
    seed = torch.randn(2, 5, dtype=DT)
    _, r = _relevance(model, x, seed)
    torch.testing.assert_close(r, _gradient_times_input(model, x, seed), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(r.sum((1, 2, 3)), seed.sum(1), rtol=1e-10, atol=1e-12)


class Exponential(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def test_an_operation_without_a_rule_is_named_and_the_model_left_as_found(images):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Exponential(), nn.Flatten()).to(DT)
    model.train()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"module '1' \(Exponential\).*ExpBackward0.*rules="):
        LRPEngine(model, "epsilon").forward(images(1, size=6))
    assert_unchanged(model, before)
    engine = LRPEngine(model, "epsilon")
    engine.set_rule("1", Pass())  # the error's advice works
    assert engine.forward(images(1, size=6)).propagate(torch.ones(1, 64, dtype=DT)).shape == (
        1, 3, 6, 6
    )


# -- normalisation -----------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):  # ConvNeXt's: normalises channels by permuting inside
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class HandNorm2d(nn.LayerNorm):  # normalises channels by hand: only a module rule fits
    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        std = (x.var(1, unbiased=False, keepdim=True) + self.eps).sqrt()
        return (x - mean) / std * self.weight[:, None, None] + self.bias[:, None, None]


def _held_norm_oracle(x, y, seed, weight, dims, eps, groups=None):
    """R_in = x * (g - mean(g)) over the normalised axes, g = w c / std, c = R / y."""
    c = seed / y
    if groups is None:
        std = (x.var(dims, unbiased=False, keepdim=True) + eps).sqrt()
        g = c * weight / std
        return x * (g - g.mean(dims, keepdim=True))
    n, ch = x.shape[:2]
    xs = x.reshape(n, groups, -1)
    std = (xs.var(2, unbiased=False, keepdim=True) + eps).sqrt()
    g = (c * weight.reshape(1, ch, 1, 1)).reshape(n, groups, -1) / std
    return x * (g - g.mean(2, keepdim=True)).reshape(x.shape)


NORMS = {
    # name: (module, input shape, normalised axes, composite extra rules)
    "tokens (last axis)": (lambda: nn.LayerNorm(6), (2, 5, 6), (2,), {}),
    "channels last (N, H, W, C)": (lambda: nn.LayerNorm(6), (2, 3, 4, 6), (3,), {}),
    "LayerNorm2d (channels first, permuting)": (lambda: LayerNorm2d(6), (2, 6, 3, 4), (1,), {}),
    "by hand, with NormRule": (lambda: HandNorm2d(6), (2, 6, 3, 4), (1,), {HandNorm2d: NormRule()}),
    "NormRule on LayerNorm2d": (lambda: LayerNorm2d(6), (2, 6, 3, 4), (1,), {nn.LayerNorm: NormRule()}),
}


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_layer_norm_holds_the_std_over_the_axis_it_normalises(kind):
    build, shape, dims, extra = NORMS[kind]
    torch.manual_seed(0)
    norm = build().to(DT)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.zero_()
    x = torch.randn(shape, dtype=DT)
    y = norm(x).detach()
    seed = torch.randn_like(y)
    _, r = _relevance(norm, x, seed, layer_rules={LINEAR_TYPES: Epsilon(0.0), **extra})
    weight = norm.weight.detach().reshape((-1,) + (1,) * (x.dim() - 1 - dims[0]))
    torch.testing.assert_close(r, _held_norm_oracle(x, y, seed, weight, dims, norm.eps))
    torch.testing.assert_close(r.flatten(1).sum(1), seed.flatten(1).sum(1))


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="nn.RMSNorm needs torch >= 2.4")
def test_rms_norm_holds_the_rms():
    norm = nn.RMSNorm(6).to(DT)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 6, dtype=DT)
    seed = torch.randn(2, 5, 6, dtype=DT)
    _, r = _relevance(norm, x, seed)
    torch.testing.assert_close(r, seed)  # x * (w / rms) is linear in x once rms is held


@pytest.mark.parametrize("rule", [None, NormRule()], ids=["functional", "NormRule"])
def test_group_norm_holds_each_groups_std(rule):
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 6).to(DT)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.zero_()
    x = torch.randn(2, 6, 3, 4, dtype=DT)
    y = norm(x).detach()
    seed = torch.randn_like(y)
    extra = {} if rule is None else {nn.GroupNorm: rule}
    _, r = _relevance(norm, x, seed, layer_rules={LINEAR_TYPES: Epsilon(0.0), **extra})
    want = _held_norm_oracle(x, y, seed, norm.weight.detach(), None, norm.eps, groups=2)
    torch.testing.assert_close(r, want)
    torch.testing.assert_close(r.flatten(1).sum(1), seed.flatten(1).sum(1))


# -- attention ---------------------------------------------------------------------


class Attention(nn.Module):
    """One self-attention layer, ``how``: "softmax" (Tensor.softmax, as timm's
    non-fused path), "sdpa" (F.scaled_dot_product_attention), "mha" / "mha_weights"
    (nn.MultiheadAttention, need_weights False / True), sharing weights."""

    def __init__(self, how: str, dim: int = 6, heads: int = 2) -> None:
        super().__init__()
        self.how, self.heads = how, heads
        self.mha = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)

    def forward(self, x):
        if self.how.startswith("mha"):
            out, weights = self.mha(x, x, x, need_weights=self.how == "mha_weights")
            assert (weights is None) == (self.how == "mha")
            return out
        n, t, c = x.shape
        qkv = F.linear(x, self.mha.in_proj_weight).reshape(n, t, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.how == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1) @ v
        return self.mha.out_proj(out.transpose(1, 2).reshape(n, t, c))


def _held_attention_oracle(model, x, seed):
    """CP-LRP: the softmax weights constant, then LRP-0 of the linear map x -> out."""
    mha = model.mha
    n, t, c = x.shape
    h, d = model.heads, c // model.heads
    wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
    q, k = ((x @ w.T).reshape(n, t, h, d).transpose(1, 2) for w in (wq, wk))
    weights = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, -1)
    xg = x.clone().requires_grad_(True)
    v = (xg @ wv.T).reshape(n, t, h, d).transpose(1, 2)
    out = mha.out_proj((weights @ v).transpose(1, 2).reshape(n, t, c))
    (grad,) = torch.autograd.grad(out, xg, seed / out.detach())
    return x * grad, out.detach()


@pytest.mark.parametrize("how", ["softmax", "sdpa", "mha", "mha_weights"])
def test_attention_holds_its_weights_fused_or_not(how):
    torch.manual_seed(0)
    model = Attention(how).to(DT).eval()
    with torch.no_grad():
        model.mha.in_proj_weight.mul_(4.0)  # sharp attention, as in trained models
    x = torch.randn(2, 5, 6, dtype=DT)
    seed = torch.randn(2, 5, 6, dtype=DT)
    before = snapshot(model)
    p, r = _relevance(model, x, seed)
    want, out = _held_attention_oracle(model, x, seed)
    torch.testing.assert_close(p.output.detach(), out)  # the model's values
    torch.testing.assert_close(r, want)
    torch.testing.assert_close(r.sum((1, 2)), seed.sum((1, 2)))  # bias-free: conserved
    assert_unchanged(model, before)


def test_multi_head_attention_with_masks_matches_the_module():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, 3).to(DT).eval()  # sequence first, with biases
    x = torch.randn(5, 2, 6, dtype=DT)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, attn_mask=causal, key_padding_mask=padding)[0]

    model = Wrapped()
    p = LRPEngine(model, "epsilon").forward(x)
    torch.testing.assert_close(p.output.detach(), model(x))


class _HeldSoftmax(torch.overrides.TorchFunctionMode):
    """Every softmax's output detached: the attention weights held constant."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        softmaxes = (F.softmax, torch.softmax, torch.Tensor.softmax)
        return out.detach() if func in softmaxes else out


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_shifted_window_attention_holds_its_weights(shift):
    """torchvision's shifted-window attention (windows cut by roll and pad, a
    relative position bias and, shifted, the mask between regions added to the
    logits): with its biases zeroed, relevance is conserved exactly and equals
    LRP-0 of the map with the softmax weights held (computed aside)."""
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    torch.manual_seed(0)
    model = swin.ShiftedWindowAttention(8, [4, 4], [shift, shift], num_heads=2).to(DT).eval()
    with torch.no_grad():
        model.qkv.bias.zero_()
        model.proj.bias.zero_()
        model.qkv.weight[:16].mul_(4.0)  # sharp attention
        model.relative_position_bias_table.normal_(0, 1.0)  # a bias that matters
    x = torch.randn(2, 8, 8, 8, dtype=DT)  # (N, H, W, C): channels-last
    seed = torch.randn(2, 8, 8, 8, dtype=DT)
    before = snapshot(model)
    p, r = _relevance(model, x, seed)
    xg = x.clone().requires_grad_(True)
    with _HeldSoftmax():
        out = model(xg)
    (grad,) = torch.autograd.grad(out, xg, seed / out.detach())
    torch.testing.assert_close(p.output.detach(), out.detach())
    torch.testing.assert_close(r, x * grad)
    torch.testing.assert_close(r.sum((1, 2, 3)), seed.sum((1, 2, 3)))
    assert_unchanged(model, before)


# -- products, BatchNorm without a conv before it, in-place activations -----------


class Gated(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(4, 3, bias=False)

    def forward(self, x):
        if self.how == "einsum":
            return torch.einsum("ni,ni->ni", self.a(x), self.b(x))
        return self.a(x) * self.b(x)


@pytest.mark.parametrize("how", ["mul", "einsum"])
def test_a_product_of_two_activations_shares_its_relevance_equally(how):
    torch.manual_seed(0)
    model = Gated(how).to(DT).eval()
    x = torch.randn(2, 4, dtype=DT)
    seed = torch.randn(2, 3, dtype=DT)
    p = LRPEngine(model, Composite(**LRP0)).forward(x, record=["a", "b"])
    for factor in ("a", "b"):
        torch.testing.assert_close(p.propagate(seed, target=factor), seed / 2)
    torch.testing.assert_close(p.propagate(seed).sum(1), seed.sum(1))


def test_batchnorm_without_a_layer_to_fold_into_passes_relevance_through(images):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, bias=False), nn.Flatten()
    ).to(DT)
    with torch.no_grad():
        model[0].running_mean.uniform_(0.3, 0.7)  # a shift that nearly cancels x * scale
        model[0].running_var.uniform_(0.5, 1.5)
    model.eval()
    x = images(2, size=5)
    seed = torch.randn(2, 36, dtype=DT)
    p, r = _relevance(model, x, seed, record=["0"], target="0")
    r_in = p.propagate(seed)
    torch.testing.assert_close(r_in, r)  # Pass: R_in = R_out element by element
    torch.testing.assert_close(r_in.flatten(1).sum(1), seed.sum(1))


@pytest.mark.parametrize("activation", [nn.SiLU, nn.Hardswish, nn.ReLU6])
def test_in_place_activations_read_their_input_before_it_is_overwritten(activation, images):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, bias=False), activation(inplace=True), nn.Conv2d(4, 2, 3, bias=False)]
    model = nn.Sequential(*layers, nn.Flatten()).to(DT).eval()
    twin = nn.Sequential(layers[0], activation(), layers[2], nn.Flatten()).to(DT).eval()
    x = images(2, size=7)
    seed = torch.randn(2, 18, dtype=DT)
    _, r = _relevance(model, x, seed)
    _, r_twin = _relevance(twin, x, seed)
    torch.testing.assert_close(r, r_twin)
    torch.testing.assert_close(r.flatten(1).sum(1), seed.sum(1))
