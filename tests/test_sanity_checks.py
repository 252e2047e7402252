"""Model-parameter randomisation (Adebayo et al. 2018) and the statistics that
compare methods: against hand computations, a model whose maps provably
change, and an explainer that provably cannot."""

import math

import pytest
import torch
from captum.attr import Saliency
from scipy.stats import spearmanr
from torch import nn

from captum_similarity import SiameseSimilarity
from captum_similarity.metrics import (
    map_similarity,
    mean_and_standard_error,
    model_randomization_check,
    paired_difference,
)
from conftest import assert_unchanged, make_reference_model, snapshot

DT = torch.float64


class _Linear(nn.Module):
    """``f(x) = B A vec(x)``: two linear layers, so maps have a closed form."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(64, 16, bias=False).double()
        self.second = nn.Linear(16, 8, bias=False).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x.flatten(1)))


def _reset_as_the_check_does(module: nn.Module, seed: int) -> torch.Tensor:
    """The weights ``module.reset_parameters()`` draws under ``seed``, on a copy."""
    copy = nn.Linear(module.in_features, module.out_features, bias=False).double()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        copy.reset_parameters()
    return copy.weight.detach()


def test_maps_of_a_linear_model_change_as_computed_by_hand():
    model = _Linear()
    x = torch.rand(3, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    r = torch.rand(1, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(2))
    sim = SiameseSimilarity(model, "dot")

    def explain():  # gradient of <f(x), f(r)> with respect to x: A^T B^T B A r
        return Saliency(sim).attribute(x, additional_forward_args=(r,), abs=False)

    def by_hand(a, b):
        return (a.T @ b.T @ b @ a @ r.flatten()).reshape(1, 8, 8).expand(3, 8, 8)

    a0, b0 = model.first.weight.detach().clone(), model.second.weight.detach().clone()
    before = snapshot(model)
    check = model_randomization_check(model, explain, layers=["second", "first"], seed=5)
    assert_unchanged(model, before)
    b1 = _reset_as_the_check_does(model.second, 5)
    a1 = _reset_as_the_check_does(model.first, 6)
    original = by_hand(a0, b0)
    expected = [by_hand(a0, b1), by_hand(a1, b1)]  # cascading: the top first, then both
    for step, maps in enumerate(expected):
        want = map_similarity(original, maps)
        for got, value in zip(
            (check.spearman, check.spearman_abs, check.ssim, check.hog), want
        ):
            torch.testing.assert_close(got[step], value, rtol=1e-6, atol=1e-9)
    assert check.layers == ["second", "first"]
    assert float(check.means()["spearman"][-1]) < 0.9  # the maps follow the weights
    independent = model_randomization_check(model, explain, ["second", "first"], "independent", 5)
    torch.testing.assert_close(independent.spearman[0], check.spearman[0])
    torch.testing.assert_close(
        independent.spearman[1], map_similarity(original, by_hand(a1, b0))[0]
    )
    assert_unchanged(model, before)


def test_an_explainer_that_ignores_the_model_survives():
    model = make_reference_model("resnet")
    pattern = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    check = model_randomization_check(model, lambda: (pattern, pattern.flip(-1)))
    assert len(check.layers) == sum(
        1 for m in model.modules() if any(True for _ in m.parameters(recurse=False))
    )
    for name, values in check.means().items():
        torch.testing.assert_close(values, torch.ones_like(values), msg=name)
    assert check.survives


def test_model_restored_bit_for_bit_also_when_the_explainer_raises():
    model = make_reference_model("efficientnet").train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.head.weight.requires_grad_(False)
    before = snapshot(model)
    rng = torch.get_rng_state()
    calls = []

    def explain():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("midway")
        return model(torch.ones(1, 3, 32, 32, dtype=DT))[:, None, :]

    with pytest.raises(RuntimeError, match="midway"):
        model_randomization_check(model, explain)
    assert_unchanged(model, before)  # BatchNorm statistics, flags, .grad, weights
    assert torch.equal(torch.get_rng_state(), rng)


def test_errors_are_clear():
    model = _Linear()
    ok = lambda: torch.rand(2, 4, 4)  # noqa: E731
    with pytest.raises(ValueError, match="mode must be"):
        model_randomization_check(model, ok, mode="top")
    with pytest.raises(ValueError, match="without parameters"):
        model_randomization_check(nn.Sequential(model, nn.ReLU()), ok, layers=["1"])
    with pytest.raises(ValueError, match="no layer named"):
        model_randomization_check(model, ok, layers=["third"])
    with pytest.raises(TypeError, match="sequence"):
        model_randomization_check(model, ok, layers="first")
    sizes = iter([4, 5])
    with pytest.raises(ValueError, match="same shapes"):
        model_randomization_check(model, lambda: torch.rand(2, next(sizes), 4), layers=["first"])
    with pytest.raises(TypeError, match="tensor or a tuple"):
        model_randomization_check(model, lambda: [torch.rand(2, 4, 4)])


def test_map_similarity_against_definitions():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 16, 16, dtype=DT, generator=g) - 0.5
    b = torch.rand(2, 16, 16, dtype=DT, generator=g) - 0.5
    spearman, spearman_abs, ssim, hog = map_similarity(a, b)
    for i in range(2):
        assert math.isclose(spearman[i], spearmanr(a[i].ravel(), b[i].ravel())[0], rel_tol=1e-12)
        assert math.isclose(
            spearman_abs[i], spearmanr(a[i].abs().ravel(), b[i].abs().ravel())[0], rel_tol=1e-12
        )
    same = map_similarity(a, a)
    for values in same:
        torch.testing.assert_close(values, torch.ones(2, dtype=DT))
    assert torch.allclose(map_similarity(a, -a)[0], -torch.ones(2, dtype=DT))
    assert torch.all(ssim < 1) and torch.all(hog < 1)
    with pytest.warns(UserWarning, match="constant map"):
        constant = map_similarity(a, torch.zeros_like(a))
    assert torch.isnan(constant[0]).all()


def test_paired_difference_by_hand():
    a = [0.71, 0.64, 0.80, float("nan"), 0.55]
    b = [0.60, 0.66, 0.70, 0.50, 0.52]
    d = [0.11, -0.02, 0.10, 0.03]  # the pair with a NaN is left out
    mean = sum(d) / 4
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / 3) / 2
    got = paired_difference(a, b)
    assert got.n == 4
    assert math.isclose(got.mean, mean, rel_tol=1e-12)
    assert math.isclose(got.standard_error, se, rel_tol=1e-12)
    single = mean_and_standard_error([2.0])
    assert single.mean == 2.0 and math.isnan(single.standard_error)
    with pytest.raises(ValueError, match="same shape"):
        paired_difference([1.0], [1.0, 2.0])


def test_survival_needs_two_of_three_sign_free_measures():
    from captum_similarity.metrics import RandomizationCheck

    def check(abs_rho, ssim, hog):
        row = lambda v: torch.tensor([[1.0, 1.0], [v, v]], dtype=DT)  # noqa: E731
        return RandomizationCheck("cascading", ["a", "b"], row(0.0), row(abs_rho), row(ssim), row(hog))

    assert check(0.9, 0.6, 0.1).survives  # two of three keep the structure
    assert not check(0.9, 0.1, 0.2).survives  # a rank correlation inflated alone
    torch.testing.assert_close(check(0.9, 0.6, 0.1).survival(), torch.tensor([1.0, 0.6], dtype=DT))
    nan = check(0.7, 0.6, float("nan"))  # HOG undefined (a map too small): the others decide
    torch.testing.assert_close(nan.survival()[1], torch.tensor(0.6, dtype=DT))


def test_the_registry_flags_what_the_measured_run_found():
    """The registry's ``survives_randomization`` says what the last run of
    benchmarks/methods/sanity_checks.py wrote, for every model it ran on."""
    from pathlib import Path

    from captum_similarity.explainers import explainers

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sanity_checks.md"
    sections = results.read_text().split("\n## ")[1:]
    models = {"dlib's face ResNet": "dlib face ResNet", "the trained ORL embedder": "ORL embedder"}
    for section in sections:
        title, _, body = section.partition("\n")
        measured = {
            line.split(" | ")[0].lstrip("| ")
            for line in body.splitlines()
            if line.startswith("| ") and "**yes**" in line and "baseline" not in line
        }
        flagged = {
            name
            for name, spec in explainers().items()
            if models[title.strip()] in spec.survives_randomization
        }
        assert flagged == measured, title
