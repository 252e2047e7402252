"""Each LRP rule against its formula, and conservation per layer type."""

from __future__ import annotations

import pytest
import torch
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule
from torch import nn

from captum_similarity.lrp import (
    AlphaBeta,
    Composite,
    Epsilon,
    Gamma,
    Hold,
    LRPEngine,
    NormRule,
    Pass,
    ZBox,
    ZPlus,
    as_rule,
)
from captum_similarity.lrp.rules import BATCHNORM_TYPES, LINEAR_TYPES
from captum_similarity.models import SqueezeExcitation
from captum_similarity.models.vit import Attention

DT = torch.float64


def _relevance(model: nn.Module, x: torch.Tensor, seed: torch.Tensor, **composite) -> torch.Tensor:
    engine = LRPEngine(model, Composite(**composite))
    p = engine.forward(x)
    return p.propagate(seed)


def _matrix(layer: nn.Module, shape) -> torch.Tensor:
    """The layer's weight matrix (out x in) over flattened inputs, bias left out."""
    x = torch.zeros(shape, dtype=DT)
    bias = layer.bias
    layer.bias = None
    try:
        jac = torch.autograd.functional.jacobian(lambda t: layer(t[None])[0], x[0])
    finally:
        layer.bias = bias
    return jac.reshape(-1, x[0].numel())


def _oracle(rule: str, m: torch.Tensor, b: torch.Tensor, x: torch.Tensor, r_out: torch.Tensor):
    """R_in (flattened) by the textbook formula on z_ij = x_i m_ji."""
    z_ij = x[:, None, :] * m[None]  # (N, out, in)
    z = z_ij.sum(2) + b
    if rule == "lrp0":
        return (z_ij / z[..., None] * r_out[..., None]).sum(1)
    if rule == "gamma":  # amplify the contributions of the output's sign
        positive = (z >= 0)[..., None]
        zg_ij = z_ij + 0.5 * torch.where(positive, z_ij.clamp(min=0), z_ij.clamp(max=0))
        zg = zg_ij.sum(2) + b + 0.5 * torch.where(positive[..., 0], b.clamp(min=0), b.clamp(max=0))
        return (zg_ij / zg[..., None] * r_out[..., None]).sum(1)
    if rule == "zplus":
        pos = z_ij.clamp(min=0)
        return (pos / pos.sum(2, keepdim=True) * r_out[..., None]).sum(1)
    if rule == "alphabeta":
        pos, neg = z_ij.clamp(min=0), z_ij.clamp(max=0)
        share = 2 * pos / pos.sum(2, keepdim=True) - neg / neg.sum(2, keepdim=True)
        return (share * r_out[..., None]).sum(1)
    if rule == "zbox":
        low, high = torch.zeros_like(x), torch.ones_like(x)
        zb_ij = z_ij - low[:, None] * m.clamp(min=0) - high[:, None] * m.clamp(max=0)
        return (zb_ij / zb_ij.sum(2, keepdim=True) * r_out[..., None]).sum(1)
    raise AssertionError(rule)


RULES = {
    "lrp0": dict(layer_rules={LINEAR_TYPES: Epsilon(0.0)}),
    "gamma": dict(layer_rules={LINEAR_TYPES: Gamma(0.5, epsilon=0.0)}),
    "zplus": dict(layer_rules={LINEAR_TYPES: ZPlus(epsilon=0.0)}),
    "alphabeta": dict(layer_rules={LINEAR_TYPES: AlphaBeta(2.0, 1.0, epsilon=0.0)}),
    "zbox": dict(layer_rules={LINEAR_TYPES: Epsilon(0.0)}, input_rule=ZBox(0.0, 1.0, epsilon=0.0)),
}

LAYERS = {
    "linear": (lambda: nn.Linear(16, 4), (3, 16)),
    "conv1d": (lambda: nn.Conv1d(6, 3, 3, padding=1), (3, 6, 5)),
    "conv2d": (lambda: nn.Conv2d(4, 3, 3, stride=2, padding=1), (3, 4, 5, 5)),
    "conv2d_grouped": (
        lambda: nn.Conv2d(8, 6, 3, padding="same", dilation=2, groups=2),
        (3, 8, 7, 6),
    ),
}


@pytest.mark.parametrize("layer_kind", sorted(LAYERS))
@pytest.mark.parametrize("rule", sorted(RULES))
def test_linear_rules_match_their_formula(rule, layer_kind):
    torch.manual_seed(0)
    make, shape = LAYERS[layer_kind]
    layer = make().to(DT)
    x = torch.rand(shape, dtype=DT)
    if rule in ("zplus", "alphabeta", "gamma"):
        x = x - 0.5  # inputs of both signs
    out = layer(x)
    seed = torch.randn_like(out)
    got = _relevance(layer, x, seed, **RULES[rule]).reshape(shape[0], -1)
    m = _matrix(layer, shape)
    b = layer.bias.detach()
    b = b.repeat_interleave(out[0].numel() // b.numel()) if out.dim() > 2 else b
    if rule in ("zplus", "alphabeta", "zbox"):
        b = torch.zeros_like(b)  # these rules leave the bias out
    want = _oracle(rule, m, b, x.reshape(shape[0], -1), seed.reshape(shape[0], -1))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer_kind", sorted(LAYERS))
@pytest.mark.parametrize(
    "rule", [Epsilon(0.0), Gamma(0.25, epsilon=0.0), ZPlus(epsilon=0.0), AlphaBeta(2.0, 1.0, 0.0)]
)
def test_linear_rules_conserve_without_bias(rule, layer_kind):
    torch.manual_seed(0)
    make, shape = LAYERS[layer_kind]
    layer = make().to(DT)
    nn.init.zeros_(layer.bias)
    # inputs of both signs and wide layers, so that every output has positive
    # and negative contributions (z+ and alpha-beta conserve only then)
    x = torch.rand(shape, dtype=DT) - 0.5
    seed = torch.randn_like(layer(x))
    r_in = _relevance(layer, x, seed, layer_rules={LINEAR_TYPES: rule})
    torch.testing.assert_close(
        r_in.flatten(1).sum(1), seed.flatten(1).sum(1), rtol=1e-10, atol=1e-12
    )


def test_epsilon_absorbs_its_share():
    layer = nn.Linear(5, 3, bias=False).to(DT)
    x = torch.rand(4, 5, dtype=DT)
    z = layer(x).detach()
    seed = torch.randn_like(z)
    r_in = _relevance(layer, x, seed, layer_rules={LINEAR_TYPES: Epsilon(0.1)})
    want = (seed * z / (z + 0.1 * z.sign())).sum(1)
    torch.testing.assert_close(r_in.sum(1), want)


@pytest.mark.parametrize("module", [nn.SiLU(), nn.GELU(), nn.Tanh(), nn.Sigmoid()])
def test_pass_rule_hands_relevance_through(module):
    x = torch.randn(3, 7, dtype=DT)
    seed = torch.randn(3, 7, dtype=DT)
    r_in = _relevance(module, x, seed, layer_rules={nn.Module: Pass()})
    torch.testing.assert_close(r_in, seed, rtol=1e-12, atol=1e-14)


def test_squeeze_excitation_gate_is_held_constant():
    se = SqueezeExcitation(4, 2).to(DT)
    x = torch.randn(2, 4, 3, 3, dtype=DT)
    seed = torch.randn(2, 4, 3, 3, dtype=DT)
    # the SE module is recognised by class name; its convs need no rule
    r_in = _relevance(se, x, seed, layer_rules={})
    torch.testing.assert_close(r_in, seed, rtol=1e-12, atol=1e-14)


def test_layernorm_rule_is_lrp0_of_the_centring_map():
    ln = nn.LayerNorm(6).to(DT)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.zero_()
    x = torch.randn(3, 6, dtype=DT)
    y = ln(x).detach()
    seed = torch.randn_like(y)
    r_in = _relevance(ln, x, seed, layer_rules={nn.LayerNorm: NormRule()})
    std = (x.var(1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    centring = torch.eye(6, dtype=DT) - 1 / 6  # (x - mean(x)) = centring @ x
    m = ln.weight.detach()[None, :, None] * centring[None] / std[:, :, None]  # (N, out, in)
    want = x * torch.einsum("nki,nk->ni", m, seed / y)
    torch.testing.assert_close(r_in, want)
    torch.testing.assert_close(r_in.sum(1), seed.sum(1))


def test_attention_conserves_with_weights_held():
    attn = Attention(6, 2).to(DT)
    for lin in (attn.qkv, attn.proj):
        nn.init.zeros_(lin.bias)
    x = torch.randn(2, 5, 6, dtype=DT)
    seed = torch.randn(2, 5, 6, dtype=DT)
    composite = dict(layer_rules={nn.Linear: Epsilon(0.0), nn.Softmax: Hold()})
    r_in = _relevance(attn, x, seed, **composite)
    torch.testing.assert_close(r_in.sum((1, 2)), seed.sum((1, 2)))


def _conv_bn(bias: bool) -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.BatchNorm2d(3)).to(DT)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(-1.0, 1.0)  # negative scales flip signs: folding matters for z+
        bn.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_batchnorm_is_folded_into_the_conv(bias):
    model = _conv_bn(bias)
    conv, bn = model
    x = torch.rand(2, 2, 4, 4, dtype=DT)
    seed = torch.randn_like(model(x))
    got = _relevance(model, x, seed, layer_rules={LINEAR_TYPES + BATCHNORM_TYPES: ZPlus(0.0)})
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    fused = nn.Conv2d(2, 3, 3, padding=1).to(DT)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        conv_bias = conv.bias if bias else torch.zeros(3, dtype=DT)
        fused.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    want = _relevance(fused, x, seed, layer_rules={LINEAR_TYPES: ZPlus(0.0)})
    torch.testing.assert_close(got, want)


def test_folding_does_not_change_lrp0():
    model = _conv_bn(False)
    x = torch.rand(2, 2, 4, 4, dtype=DT)
    seed = torch.randn_like(model(x))
    rules = {LINEAR_TYPES + BATCHNORM_TYPES: Epsilon(0.0)}
    folded = _relevance(model, x, seed, layer_rules=rules)
    unfolded = _relevance(model, x, seed, layer_rules=rules, fold_batchnorm=False)
    torch.testing.assert_close(folded, unfolded)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 4, bias=False)
        self.right = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        return self.left(x) + self.right(x)


def test_residual_addition_splits_in_proportion():
    model = _Residual().to(DT)
    x = torch.randn(3, 4, dtype=DT)
    p = LRPEngine(model, "lrp0").forward(x, record=["left", "right"])
    seed = torch.randn(3, 4, dtype=DT)
    left, right = p.activation("left").detach(), p.activation("right").detach()
    r_left = p.propagate(seed, target="left")
    r_right = p.propagate(seed, target="right")
    torch.testing.assert_close(r_left, left / (left + right) * seed)
    torch.testing.assert_close(r_left + r_right, seed)


def test_captum_rules_are_translated():
    assert as_rule(EpsilonRule(0.01)).epsilon == 0.01
    gamma = as_rule(GammaRule(0.3, set_bias_to_zero=True))
    assert isinstance(gamma, Gamma) and gamma.gamma == 0.3 and gamma.zero_bias
    assert isinstance(as_rule(Alpha1_Beta0_Rule()), ZPlus)
    assert isinstance(as_rule(IdentityRule()), Pass)
    with pytest.raises(TypeError, match="expected an LRP rule"):
        as_rule("epsilon")


def test_rule_arguments_are_checked():
    with pytest.raises(ValueError, match="alpha - beta"):
        AlphaBeta(2.0, 0.5)
    with pytest.raises(ValueError, match="gamma"):
        Gamma(-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        Epsilon(-1.0)
    with pytest.raises(ValueError, match="low"):
        ZBox(1.0, 0.0)


class _ChannelAffine(nn.Module):
    """A per-channel affine layer declaring itself foldable, as dlib's Affine does."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(scale), nn.Parameter(shift)

    def forward(self, x):
        return x * self.scale[:, None, None] + self.shift[:, None, None]

    def lrp_channel_affine(self):
        return self.scale, self.shift


def test_declared_channel_affine_layers_fold_like_batchnorm():
    model = _conv_bn(True)
    conv, bn = model
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()
    shift = (bn.bias - bn.running_mean * scale).detach()
    affine = nn.Sequential(conv, _ChannelAffine(scale, shift)).eval()
    x = torch.rand(2, 2, 4, 4, dtype=DT)
    seed = torch.randn_like(model(x))
    # z+ ignores biases: unfolded, the negative scales would flip what counts as positive
    rules = {"layer_rules": {LINEAR_TYPES: ZPlus(0.0)}, "rules": {"1": Epsilon(0.0)}}
    torch.testing.assert_close(
        _relevance(affine, x, seed, **rules),
        _relevance(model, x, seed, layer_rules={LINEAR_TYPES + BATCHNORM_TYPES: ZPlus(0.0)}),
    )


def test_element_wise_choices_are_exact():
    from captum_similarity.lrp.rules import SignSplit, divide_or_zero

    g = torch.Generator().manual_seed(0)
    d = torch.randn(3, 4, 5, dtype=torch.float64, generator=g)
    d[0, 1, :3] = 0.0
    n = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g)  # a leading seed dimension
    expected = torch.where(d == 0, torch.zeros_like(n), n / d)
    assert torch.equal(divide_or_zero(n, d), expected)
    nonzero = d + (d == 0).to(d.dtype)
    assert torch.equal(divide_or_zero(n, nonzero), n / nonzero)
    x = torch.randn(2, 3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    x_pos, x_neg = SignSplit.apply(x)
    assert torch.equal(x_pos + x_neg, x.detach())
    g_pos, g_neg = (torch.randn(2, 3, 6, dtype=torch.float64, generator=g) for _ in range(2))
    (grad,) = torch.autograd.grad((x_pos, x_neg), x, (g_pos, g_neg), retain_graph=True)
    assert torch.equal(grad, torch.where(x.detach() >= 0, g_pos, g_neg))
    (only_negative,) = torch.autograd.grad(x_neg, x, g_neg)
    assert torch.equal(only_negative, torch.where(x.detach() >= 0, 0.0, g_neg))


# a convolution without a known adjoint: the rules split its input through autograd
_REFLECT = (lambda: nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect"), (3, 4, 5, 5))


@pytest.mark.parametrize("layer_kind", ["conv2d", "conv2d_grouped", "conv2d_reflect", "linear"])
def test_signed_inputs_are_split_in_one_node_keeping_only_their_sign(layer_kind):
    from captum_similarity.lrp.rules import SignedLinear, SignSplit
    from captum_similarity.lrp.graph import function_class, topological

    torch.manual_seed(0)
    make, shape = LAYERS.get(layer_kind, _REFLECT)
    layer = make().to(DT)
    x = torch.rand(shape, dtype=DT) - 0.5
    out = LRPEngine(layer, Composite(layer_rules={LINEAR_TYPES: ZPlus()})).forward(x).output
    nodes = {function_class(node) or node.name(): node for node in topological(out.grad_fn)}
    if layer_kind == "conv2d_reflect":  # x^+ and x^- through the layer's own forward
        assert SignSplit in nodes and SignedLinear not in nodes
        return
    node = nodes[SignedLinear]
    (mask,) = node.saved_tensors  # neither x^+ nor x^- is kept
    assert torch.equal(mask, (x >= 0).to(DT))
    assert not any(
        isinstance(name, str) and name.startswith(("Convolution", "Mm", "Addmm")) for name in nodes
    )
