"""The LRP engine: gradient x input, layer relevance, batched seeds, errors, model state."""

from __future__ import annotations

import pytest
import torch
from captum.attr._utils.lrp_rules import EpsilonRule
from conftest import assert_unchanged, make_reference_model, snapshot
from torch import nn

from captum_similarity.lrp import (
    Composite,
    Epsilon,
    Gamma,
    LRPEngine,
    Pass,
    Rule,
    ZBox,
    depth_gamma,
)
from captum_similarity.lrp.rules import LINEAR_TYPES
from captum_similarity.models import SimpleCNN

DT = torch.float64


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_lrp0_equals_gradient_times_input_on_bias_free_relu_networks(pool, images):
    torch.manual_seed(0)
    model = SimpleCNN(bias=False, pool=pool).to(DT).eval()
    x = images(3)
    weights = torch.randn(3, model.embedding_dim, dtype=DT)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(xg) * weights).sum(), xg)
    p = LRPEngine(model, "lrp0").forward(x)
    relevance = p.propagate(p.output.detach() * weights)
    torch.testing.assert_close(relevance, grad * x, rtol=1e-10, atol=1e-14)


def test_output_values_are_the_models(reference_model, images):
    x = images(2)
    p = LRPEngine(reference_model, "epsilon_plus").forward(x)
    torch.testing.assert_close(p.output.detach(), reference_model(x), rtol=1e-12, atol=1e-12)


def test_layer_relevance_chains_to_the_input(images):
    model = make_reference_model("resnet")
    x = images(2)
    p = LRPEngine(model, "epsilon_plus").forward(x, record=["layer2"])
    seed = p.output.detach()
    at_layer = p.propagate(seed, target="layer2")
    assert at_layer.shape == p.activation("layer2").shape
    # every path from the input to the output crosses layer2
    torch.testing.assert_close(p.propagate(at_layer, source="layer2"), p.propagate(seed))


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_batched_seeds_equal_one_at_a_time(kind, images):
    model = make_reference_model(kind)
    layer = "layer2" if kind == "resnet" else "blocks.0"
    engine = LRPEngine(model, _bounded("epsilon_plus"))
    p = engine.forward(images(2), record=[layer])
    act = p.activation(layer).detach()
    g = torch.Generator().manual_seed(0)
    seeds = torch.randn((4,) + tuple(act.shape), generator=g, dtype=DT) * act
    batched = p.propagate(seeds, source=layer, batching="vmap")
    single = torch.stack([p.propagate(s, source=layer) for s in seeds])
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-14)
    out_seeds = torch.randn((3,) + tuple(p.output.shape), generator=g, dtype=DT)
    torch.testing.assert_close(
        p.propagate(out_seeds, batching="vmap"), torch.stack([p.propagate(s) for s in out_seeds])
    )


def _bounded(name: str) -> Composite:
    from captum_similarity.lrp import resolve_composite

    composite = resolve_composite(name)
    composite.input_rule = ZBox(0.0, 1.0)
    return composite


def test_folded_conv_reports_its_batchnorm_output(images):
    model = make_reference_model("resnet")
    x = images(1)
    p = LRPEngine(model, "epsilon_plus").forward(x, record=["stem.0", "stem.1"])
    torch.testing.assert_close(p.activation("stem.0").detach(), model.stem[1](model.stem[0](x)))
    seed = p.output.detach()
    torch.testing.assert_close(
        p.propagate(seed, target="stem.0"), p.propagate(seed, target="stem.1")
    )


class _ConvThenNorm(nn.Module):
    """A conv registered right before a BatchNorm that it does not (only) feed."""

    def __init__(self, wiring: str, norm_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        norm = nn.BatchNorm2d(4 if wiring == "shared" else 3)
        modules = [("conv", nn.Conv2d(3, 4, 3, padding=1)), ("bn", norm)]
        for name, module in modules[::-1] if norm_first else modules:
            self.add_module(name, module)
        self.wiring = wiring
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if self.wiring == "shared":  # the conv's output feeds the BatchNorm and the sum
            y = self.bn(y) + y
        else:  # the BatchNorm reads the input, the conv's output goes elsewhere
            y = self.conv(self.bn(x)) + y
        return self.head(torch.relu(y).mean((2, 3)))


@pytest.mark.parametrize("wiring", ["shared", "elsewhere"])
def test_rule_deferred_to_the_batchnorm_fold_falls_back_when_the_conv_feeds_more(wiring, images):
    """A conv registered before a BatchNorm gets its rule from the fold only;
    when its output also (or only) goes elsewhere the engine applies the rule
    itself, as it does for a conv registered after the BatchNorm."""
    x = images(2)
    expected_model = _ConvThenNorm(wiring, norm_first=True).double().eval()
    model = _ConvThenNorm(wiring, norm_first=False).double().eval()
    model.load_state_dict(expected_model.state_dict())
    for m in (model, expected_model):
        m.bn.running_mean.copy_(torch.linspace(-0.2, 0.2, m.bn.num_features))
    engine = LRPEngine(model, "epsilon_plus")
    if wiring == "elsewhere":
        engine.set_rule("conv", Epsilon())  # a conv run twice: give it one rule, not a fold
        expected_engine = LRPEngine(expected_model, "epsilon_plus")
        expected_engine.set_rule("conv", Epsilon())
    else:
        expected_engine = LRPEngine(expected_model, "epsilon_plus")
    for _ in range(2):  # the second pass remembers the conv
        p, q = engine.forward(x), expected_engine.forward(x)
        torch.testing.assert_close(p.output, q.output)
        torch.testing.assert_close(p.propagate(p.output.detach()), q.propagate(q.output.detach()))
    assert engine._eager == {id(model.conv)}


def test_depth_gamma_follows_the_schedule():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(8)])
    composite = Composite({LINEAR_TYPES: depth_gamma((0.5, 0.25, 0.1, 0.0))})
    gammas = [rule.gamma for _, _, rule in composite.plan(model)]
    assert gammas == [0.5, 0.5, 0.25, 0.25, 0.1, 0.1, 0.0, 0.0]


class _Failing(Rule):
    def apply(self, module, inputs, output, trace):
        raise RuntimeError("rule failed")


def test_model_left_as_found_after_an_exception(images):
    model = make_reference_model("resnet")
    model.layer1.train()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    handle = model.stem.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    engine = LRPEngine(model, "epsilon_plus")
    engine.set_rule("layer2.0.conv2", _Failing())
    with pytest.raises(RuntimeError, match="rule failed"):
        engine.forward(images(2))
    assert_unchanged(model, before)
    handle.remove()


def test_module_rule_attribute_is_honoured_and_kept(images):
    model = SimpleCNN(bias=True).to(DT).eval()
    x = images(2)
    model.head.rule = EpsilonRule(10.0)  # Captum's convention
    p = LRPEngine(model, "lrp0").forward(x)
    strong = p.propagate(p.output.detach())
    assert isinstance(model.head.rule, EpsilonRule)  # not deleted after the call
    del model.head.rule
    p = LRPEngine(model, Composite({LINEAR_TYPES: Epsilon(0.0)}, rules={"head": Epsilon(10.0)}))
    p = p.forward(x)
    torch.testing.assert_close(strong, p.propagate(p.output.detach()))


def test_user_rule_wins_over_input_rule(images):
    model = SimpleCNN(bias=False).to(DT).eval()
    x = images(1)
    composite = _bounded("lrp0")
    composite.set_rule("features.0", Gamma(0.0, epsilon=0.0))
    p = LRPEngine(model, composite).forward(x)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).pow(2).sum(), xg)
    torch.testing.assert_close(p.propagate(p.output.detach() ** 2), grad * x / 2)


def test_input_rule_not_applied_warns(images):
    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = SimpleCNN(bias=False)

        def forward(self, x):
            return self.net(x - 0.5)

    with pytest.warns(UserWarning, match="input rule"):
        LRPEngine(Shifted().to(DT).eval(), _bounded("lrp0")).forward(images(1))


def test_propagate_checks_seed_and_layers(images):
    model = make_reference_model("cnn")
    p = LRPEngine(model).forward(images(2), record=["features.2", "features.4"])
    with pytest.raises(ValueError, match="seed must have shape"):
        p.propagate(torch.ones(3, 32, dtype=DT))
    with pytest.raises(ValueError, match="was not recorded"):
        p.propagate(p.output.detach(), target="features.0")
    with pytest.raises(ValueError, match="below the source"):
        p.propagate(
            torch.ones_like(p.activation("features.2")), source="features.2", target="features.4"
        )
    with pytest.raises(ValueError, match="no layer named"):
        p.activation("nope")


def test_composite_and_engine_arguments_are_checked():
    from captum_similarity.lrp import resolve_composite

    with pytest.raises(ValueError, match="unknown composite 'nope'"):
        resolve_composite("nope")
    with pytest.raises(TypeError, match="preset name or a Composite"):
        resolve_composite(3)
    with pytest.raises(TypeError, match="nn.Module"):
        LRPEngine(lambda x: x)
    with pytest.raises(TypeError, match="input_rule must be a Rule"):
        Composite({}, input_rule="zbox")
    with pytest.raises(TypeError, match="module name or a module"):
        Composite({}).set_rule(3, Pass())
    composite = resolve_composite("epsilon")
    composite.set_rule("head", Pass())
    assert "head" not in resolve_composite("epsilon").rules  # presets are fresh copies


class _Block(nn.Module):
    """A torchvision-style residual block, with in-place operations or without."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.inplace:
            out += x
        else:
            out = out + x
        return self.head(self.relu(out).mean((2, 3)))


@pytest.mark.parametrize("composite", ["epsilon_plus", "lrp0"])
def test_in_place_operations_after_rules_give_the_same_relevance(composite, images):
    torch.manual_seed(0)
    models = {flag: _Block(flag).to(DT).eval() for flag in (True, False)}
    for bn in (models[True].bn1, models[True].bn2):  # non-trivial folding
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    models[False].load_state_dict(models[True].state_dict())
    x = images(2) - 0.5
    before = snapshot(models[True])
    maps = {}
    for flag, model in models.items():
        p = LRPEngine(model, composite).forward(x.clone(), record=["bn2"])
        maps[flag] = (p.propagate(p.output.detach()), p.activation("bn2").detach())
    torch.testing.assert_close(maps[True][0], maps[False][0], rtol=1e-12, atol=1e-14)
    # the recorded tensor holds what the model's own forward leaves in it (out += x; relu_)
    torch.testing.assert_close(maps[True][1], (maps[False][1] + x).relu(), rtol=1e-12, atol=1e-14)
    assert_unchanged(models[True], before)


@pytest.mark.parametrize(
    "kind,default", [("cnn", False), ("resnet", False), ("efficientnet", True)]
)
def test_channels_last_by_default_only_for_grouped_convolutions(kind, default, images):
    p = LRPEngine(make_reference_model(kind)).forward(images(2))
    assert p.input.is_contiguous(memory_format=torch.channels_last) == default


@pytest.mark.parametrize("kind", ["cnn", "resnet", "efficientnet", "vit"])
def test_channels_last_pass_gives_the_same_relevance(kind, images):
    model = make_reference_model(kind)
    x = images(2)
    maps = []
    for layout in (False, True):
        p = LRPEngine(model, "epsilon_plus", channels_last=layout).forward(x)
        assert p.input.is_contiguous(memory_format=torch.channels_last) == layout
        relevance = p.propagate(p.output.detach())
        assert relevance.is_contiguous()  # handed back in the usual layout
        maps.append(relevance)
    torch.testing.assert_close(maps[1], maps[0], rtol=1e-10, atol=1e-14)


class _ViewsItsFeatures(nn.Module):
    """Flattens a feature map with ``.view``, which a channels-last map refuses;
    its grouped convolution makes the engine try channels-last by default."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, groups=3)
        self.head = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).relu()
        return self.head(f.view(f.shape[0], -1))


def test_model_refusing_channels_last_runs_as_given(images):
    torch.manual_seed(0)
    model = _ViewsItsFeatures().to(DT).eval()
    x = images(2, size=8)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="view"):
        LRPEngine(model, channels_last=True).forward(x)
    engine = LRPEngine(model)  # None: tries channels-last, then the layout given
    p = engine.forward(x)
    assert engine._layout_refused and not p.input.is_contiguous(memory_format=torch.channels_last)
    expected = LRPEngine(model, channels_last=False).forward(x)
    torch.testing.assert_close(
        p.propagate(p.output.detach()), expected.propagate(expected.output.detach())
    )
    assert_unchanged(model, before)
    with pytest.raises(TypeError, match="channels_last"):
        LRPEngine(model, channels_last="yes")


@pytest.mark.parametrize(
    "layer",
    [
        "blocks.0.expand.1",  # a BatchNorm output: between the SiLU's factor and the fold's
        "blocks.0.depthwise.2",  # a SiLU output: a chain's first node
        "blocks.0.se",  # the squeeze-excitation output, read by the projection
    ],
)
def test_merged_rule_factors_keep_every_recorded_layer_right(layer, images, monkeypatch):
    from captum_similarity.lrp import engine as engine_module

    model = make_reference_model("efficientnet")
    x = images(2)

    def relevance(run):
        seed = torch.randn(run.activation(layer).shape, dtype=x.dtype)
        seed = seed * run.activation(layer).detach()  # relevance-shaped
        return (
            run.propagate(torch.ones_like(run.output), target=layer),
            run.propagate(seed, source=layer),
        )

    torch.manual_seed(0)
    merged = relevance(LRPEngine(model).forward(x, record=[layer]))
    monkeypatch.setattr(engine_module, "fuse_factors", lambda roots, function: None)
    torch.manual_seed(0)
    separate = relevance(LRPEngine(model).forward(x, record=[layer]))
    for got, want in zip(merged, separate):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_rule_factors_of_an_activation_and_the_layer_below_are_kept_as_one(images):
    from captum_similarity.lrp.rules import Rewired
    from captum_similarity.lrp.graph import function_class, topological

    model = make_reference_model("efficientnet")
    run = LRPEngine(model).forward(images(2))
    nodes = [n for n in topological(run.output.grad_fn) if function_class(n) is Rewired]
    # per MBConv block: expand (SiLU merged), depthwise (SiLU and the gate merged), project
    kept = [n for n in nodes if n.factor is not None]
    assert len(nodes) - len(kept) == 3 * len(model.blocks) + 2  # + the stem's and head's SiLU
