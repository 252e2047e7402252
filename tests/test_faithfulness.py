"""Insertion/deletion metric, SimilarityRISE and the sliding-window recipe.

Oracles: an embedder that only sees one region (the true saliency is known),
hand-built perturbed images, the RISE formula evaluated on the documented
masks, linearity of the variable-reference average, and Captum's Occlusion
against an explicit sliding-window loop.
"""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Occlusion
from scipy.ndimage import gaussian_filter
from torch import nn

from captum_similarity import SiameseSimilarity, SimilarityRISE
from captum_similarity.metrics import auroc, gaussian_blur, insertion_deletion
from captum_similarity.rise import MaskPlan, random_masks
from conftest import assert_unchanged, snapshot

SIZE = 20
TOP, LEFT, SIDE = 5, 8, 6  # the region the embedder sees


class RegionEmbedder(nn.Module):
    """``tanh(W vec(x[region]) + b)``: only the pixels of one square region matter."""

    def __init__(self, channels: int = 1, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(channels * SIDE * SIDE, dim).double()

    def forward(self, x):
        return torch.tanh(self.linear(x[:, :, TOP : TOP + SIDE, LEFT : LEFT + SIDE].flatten(1)))


def region_mask(channels: int = 1) -> torch.Tensor:
    m = torch.zeros(1, channels, SIZE, SIZE, dtype=torch.float64)
    m[:, :, TOP : TOP + SIDE, LEFT : LEFT + SIDE] = 1
    return m


@pytest.fixture
def region_sim():
    return SiameseSimilarity(RegionEmbedder().eval(), "cosine")


def faces(n, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, SIZE, SIZE, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- insertion / deletion


def test_true_map_beats_random_which_beats_inverted(region_sim):
    x = faces(4)
    ref = (x + 0.05 * faces(4, seed=1)).clamp(0, 1)  # a second view of the same images
    g = torch.Generator().manual_seed(3)
    jitter = 1e-3 * torch.rand(4, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    maps = {
        "true": region_mask().expand(4, -1, -1, -1) + jitter,
        "random": torch.rand(4, 1, SIZE, SIZE, generator=g, dtype=torch.float64),
        "inverted": 1 - region_mask().expand(4, -1, -1, -1) + jitter,
    }
    res = {k: insertion_deletion(region_sim, x, a, ref, n_steps=51) for k, a in maps.items()}
    for suffix in ("", "_normalized"):
        dele = {k: getattr(r, "deletion_auc" + suffix) for k, r in res.items()}
        ins = {k: getattr(r, "insertion_auc" + suffix) for k, r in res.items()}
        assert (dele["true"] < dele["random"]).all() and (dele["random"] < dele["inverted"]).all()
        assert (ins["true"] > ins["random"]).all() and (ins["random"] > ins["inverted"]).all()
    # the true map removes the whole region after 36 / 400 = 9% of the pixels
    t = res["true"].fractions
    assert torch.allclose(
        res["true"].deletion_curve[:, t >= 0.1], res["true"].deletion_curve[:, -1:]
    )


@torch.no_grad()
def test_curves_equal_hand_built_perturbations(region_sim):
    x, ref = faces(2), faces(2, seed=1)
    attr = torch.randn(
        2, 1, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    fill = 0.3
    res = insertion_deletion(region_sim, x, attr, ref, n_steps=6, baselines=fill)
    for i in range(2):
        order = attr[i, 0].flatten().argsort(descending=True)
        for k, t in enumerate(res.fractions.tolist()):
            top = torch.zeros(SIZE * SIZE, dtype=torch.bool)
            top[order[: round(t * SIZE * SIZE)]] = True
            top = top.view(1, 1, SIZE, SIZE)
            inserted = torch.where(top, x[i : i + 1], torch.full_like(x[:1], fill))
            deleted = torch.where(top, torch.full_like(x[:1], fill), x[i : i + 1])
            assert res.insertion_curve[i, k] == pytest.approx(
                float(region_sim(inserted, ref[i : i + 1])), abs=1e-12
            )
            assert res.deletion_curve[i, k] == pytest.approx(
                float(region_sim(deleted, ref[i : i + 1])), abs=1e-12
            )
    s = region_sim(x, ref)
    assert torch.allclose(res.score, s) and torch.allclose(res.insertion_curve[:, -1], s)
    assert torch.allclose(res.deletion_curve[:, 0], s)
    s_fill = region_sim(torch.full_like(x, fill), ref)
    assert torch.allclose(res.insertion_curve[:, 0], s_fill) and torch.allclose(
        res.deletion_curve[:, -1], s_fill
    )


def test_aucs_are_trapezoids_of_raw_and_min_max_curves(region_sim):
    x, ref = faces(3), faces(1, seed=1)
    res = insertion_deletion(
        region_sim, x, torch.rand(3, SIZE, SIZE, dtype=torch.float64), ref, n_steps=11
    )
    for name in ("insertion", "deletion"):
        curve = getattr(res, f"{name}_curve")
        dt = 0.1
        raw = dt * (curve[:, 1:] + curve[:, :-1]).sum(1) / 2
        assert torch.allclose(getattr(res, f"{name}_auc"), raw)
        lo, hi = curve.min(1, keepdim=True).values, curve.max(1, keepdim=True).values
        norm = (curve - lo) / (hi - lo)
        assert torch.allclose(
            getattr(res, f"{name}_auc_normalized"), dt * (norm[:, 1:] + norm[:, :-1]).sum(1) / 2
        )
        assert (
            (getattr(res, f"{name}_auc_normalized") >= 0)
            & (getattr(res, f"{name}_auc_normalized") <= 1)
        ).all()


def test_batched_generic_and_embedding_references_agree(region_sim):
    x, ref = faces(3), faces(3, seed=1)
    attr = torch.rand(3, 1, SIZE, SIZE, dtype=torch.float64)
    base = insertion_deletion(region_sim, x, attr, ref, n_steps=7, max_examples_per_batch=None)
    variants = [
        insertion_deletion(region_sim, x, attr, ref, n_steps=7, max_examples_per_batch=5),
        insertion_deletion(
            lambda a, b: region_sim(a, b), x, attr, ref, n_steps=7, max_examples_per_batch=4
        ),
        insertion_deletion(region_sim, x, attr, region_sim.embed(ref).detach(), n_steps=7),
    ]
    for other in variants:
        assert torch.allclose(other.insertion_curve, base.insertion_curve, atol=1e-12)
        assert torch.allclose(other.deletion_curve, base.deletion_curve, atol=1e-12)
    one = insertion_deletion(region_sim, x, attr, ref[:1], n_steps=7)
    repeated = insertion_deletion(region_sim, x, attr, ref[:1].expand(3, -1, -1, -1), n_steps=7)
    assert torch.allclose(one.deletion_curve, repeated.deletion_curve, atol=1e-12)


def test_layer_maps_are_upsampled_and_channels_reduced(region_sim):
    x, ref = faces(2, channels=3), faces(2, seed=1, channels=3)
    sim = SiameseSimilarity(RegionEmbedder(channels=3).eval())
    small = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    up = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    a = insertion_deletion(sim, x, small, ref, n_steps=5)
    b = insertion_deletion(sim, x, up[:, 0], ref, n_steps=5)
    assert torch.allclose(a.deletion_curve, b.deletion_curve)
    per_channel = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    for reduction, reduced in (
        ("sum", per_channel.sum(1)),
        ("abs_sum", per_channel.abs().sum(1)),
        ("max_abs", per_channel.abs().amax(1)),
    ):
        c = insertion_deletion(sim, x, per_channel, ref, n_steps=5, channel_reduction=reduction)
        d = insertion_deletion(sim, x, reduced, ref, n_steps=5)
        assert torch.allclose(c.insertion_curve, d.insertion_curve), reduction


def test_blur_baseline_matches_scipy(region_sim):
    x = faces(2)
    blurred = gaussian_blur(x, 2.0)
    expected = torch.from_numpy(
        gaussian_filter(x.numpy(), sigma=(0, 0, 2.0, 2.0), mode="nearest", truncate=3.0)
    )
    assert torch.allclose(blurred, expected, atol=1e-12)
    res = insertion_deletion(
        region_sim,
        x,
        torch.rand(2, SIZE, SIZE, dtype=torch.float64),
        x,
        n_steps=3,
        baselines="blur",
        blur_sigma=2.0,
    )
    assert torch.allclose(res.insertion_curve[:, 0], region_sim(blurred, x))
    image_baseline = insertion_deletion(
        region_sim,
        x,
        torch.rand(2, SIZE, SIZE, dtype=torch.float64),
        x,
        n_steps=3,
        baselines=blurred,
    )
    assert torch.allclose(image_baseline.deletion_curve[:, -1], region_sim(blurred, x))


def test_insertion_deletion_errors(region_sim):
    x, ref, a = faces(2), faces(2, seed=1), torch.rand(2, SIZE, SIZE, dtype=torch.float64)
    cases = [
        (dict(inputs=x[0]), "inputs must be images"),
        (dict(attributions=a[:1]), "attributions have batch size 1, inputs 2"),
        (dict(attributions=a * float("nan")), "NaN or infinite"),
        (dict(references=faces(3)), "references have batch size 3"),
        (dict(n_steps=1), "n_steps"),
        (dict(baselines="noise"), "baselines must be"),
        (dict(baselines=torch.zeros(3, 1, SIZE, SIZE)), "do not broadcast"),
        (dict(channel_reduction="mean"), "channel_reduction"),
        (dict(attributions=torch.rand(2, 1, 1, 1, 1)), "attributions must be"),
    ]
    for override, message in cases:
        kwargs = dict(forward_func=region_sim, inputs=x, attributions=a, references=ref, n_steps=3)
        kwargs.update(override)
        with pytest.raises(ValueError, match=message):
            insertion_deletion(**kwargs)
    with pytest.raises(TypeError, match="floating-point"):
        insertion_deletion(region_sim, x, a, ref.long())
    with pytest.raises(ValueError, match="one score per image"):
        insertion_deletion(lambda p, q: region_sim(p, q)[:, None], x, a, ref, n_steps=3)


# ---------------------------------------------------------------- SimilarityRISE


def test_rise_recovers_the_region(region_sim):
    x = faces(1)
    saliency = SimilarityRISE(region_sim).attribute(
        x, additional_forward_args=(x,), n_masks=400, seed=0
    )
    assert saliency.shape == x.shape
    assert auroc(saliency.flatten(), region_mask().flatten().bool()) > 0.97


def test_rise_equals_the_formula_on_the_documented_masks(region_sim):
    x, ref = faces(2), faces(2, seed=1)
    fill = 0.25
    out = SimilarityRISE(region_sim).attribute(
        x,
        additional_forward_args=(ref,),
        baselines=fill,
        n_masks=60,
        mask_cells=4,
        seed=7,
        perturbations_per_eval=25,
    )
    masks = random_masks(60, (SIZE, SIZE), mask_cells=4, seed=7).double()
    for i in range(2):
        scores = region_sim(x[i : i + 1] * masks + fill * (1 - masks), ref[i : i + 1])
        expected = (scores[:, None, None, None] * masks).sum(0) / masks.sum(0)
        assert torch.allclose(out[i], expected.expand(1, -1, -1), atol=1e-12)


def test_random_masks_follow_sane():
    masks = random_masks(400, (24, 18), mask_cells=(4, 3), mask_probability=0.3, seed=0)
    assert masks.shape == (400, 1, 24, 18) and masks.min() >= 0 and masks.max() <= 1
    assert masks.mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(
        masks, random_masks(400, (24, 18), mask_cells=(4, 3), mask_probability=0.3, seed=0)
    )
    # bilinear upsampling of a grid: smooth, with values strictly between 0 and 1 at cell borders
    assert ((masks > 0) & (masks < 1)).any()
    # a grid of all-kept cells renders as ones everywhere, whatever the shift
    assert torch.allclose(
        random_masks(5, (13, 11), mask_probability=1.0, seed=0), torch.ones(5, 1, 13, 11)
    )


def test_rise_one_query_against_many_references_equals_each_reference(region_sim):
    query, refs = faces(1), faces(3, seed=1)
    rise = SimilarityRISE(region_sim)
    kwargs = dict(n_masks=50, seed=1)
    many = rise.attribute(query, additional_forward_args=(refs,), **kwargs)
    single = torch.cat([rise.attribute(query, refs[j : j + 1], **kwargs) for j in range(3)])
    assert many.shape == (3, 1, SIZE, SIZE) and torch.allclose(many, single, atol=1e-12)
    expanded = rise.attribute(query.expand(3, -1, -1, -1), (refs,), **kwargs)
    assert torch.allclose(expanded, many, atol=1e-12)
    batched = rise.attribute(query, (refs,), perturbations_per_eval=7, **kwargs)
    assert torch.allclose(batched, many, atol=1e-12)
    generic = SimilarityRISE(lambda a, b: region_sim(a, b)).attribute(query, (refs,), **kwargs)
    assert torch.allclose(generic, many, atol=1e-12)
    embedded = rise.attribute(query, (region_sim.embed(refs).detach(),), **kwargs)
    assert torch.allclose(embedded, many, atol=1e-12)
    assert not torch.allclose(rise.attribute(query, (refs,), n_masks=50, seed=2), many)


def test_rise_variable_reference_averages_masked_references(region_sim):
    query, ref = faces(1), faces(1, seed=1)
    out = SimilarityRISE(region_sim).attribute(
        query, (ref,), n_masks=40, mask_cells=8, n_reference_masks=3, seed=5, baselines=0.5
    )
    generator = torch.Generator().manual_seed(
        5
    )  # documented order: query masks, then reference masks
    qmasks = MaskPlan(40, (8, 8), 0.5, generator).render(
        slice(0, 40), (SIZE, SIZE), torch.float64, "cpu"
    )
    rmasks = MaskPlan(3, (8, 8), 0.5, generator).render(
        slice(0, 3), (SIZE, SIZE), torch.float64, "cpu"
    )
    masked_query = query * qmasks + 0.5 * (1 - qmasks)
    per_ref = []
    for m in rmasks:
        scores = region_sim(masked_query, ref * m + 0.5 * (1 - m))
        per_ref.append((scores[:, None, None, None] * qmasks).sum(0) / qmasks.sum(0))
    assert torch.allclose(out[0], torch.stack(per_ref).mean(0), atol=1e-12)


def test_rise_explains_both_images_of_a_pair():
    def asymmetric(a, b):  # not symmetric: the second argument is rectified
        return (a * b.relu()).sum(1)

    sim = SiameseSimilarity(RegionEmbedder().eval(), asymmetric)
    x1, x2 = faces(2), faces(2, seed=1)
    kwargs = dict(n_masks=30, seed=0)
    a1, a2 = SimilarityRISE(sim).attribute((x1, x2), **kwargs)
    assert torch.allclose(a1, SimilarityRISE(sim).attribute(x1, (x2,), **kwargs), atol=1e-12)
    # the second image is explained for s(x1, .), computed here by an independent path
    g1, g2 = SimilarityRISE(lambda a, b: sim(a, b)).attribute((x1, x2), **kwargs)
    assert torch.allclose(a2, g2, atol=1e-12) and torch.allclose(a1, g1, atol=1e-12)
    swapped = SimilarityRISE(lambda a, b: sim(b, a)).attribute(x2, (x1,), **kwargs)
    assert torch.allclose(a2, swapped, atol=1e-12)


def test_rise_early_stop_gives_the_map_of_the_masks_it_used(region_sim):
    x1, x2 = faces(2), faces(2, seed=1)
    rise = SimilarityRISE(region_sim)
    a1, a2 = rise.attribute(
        (x1, x2), n_masks=4000, seed=3, perturbations_per_eval=50, stop_tolerance=0.3
    )
    used = rise.masks_used
    assert len(used) == 4 and all(u % 50 == 0 and 200 <= u < 4000 for u in used)
    masks = random_masks(4000, (SIZE, SIZE), seed=3).double()  # the plan's masks, in order

    @torch.no_grad()
    def formula(query, ref, m, second=False):
        scores = region_sim(ref, query * m) if second else region_sim(query * m, ref)
        return (scores[:, None, None, None] * m).sum(0) / m.sum(0)

    def error_ratio(query, ref, n, second=False):
        """Standard error from the 50-mask batches' maps over the map's spread."""
        own = torch.stack([formula(query, ref, masks[j : j + 50], second) for j in range(0, n, 50)])
        error = (own.var(0, unbiased=True) / own.shape[0]).sqrt().norm()
        whole = formula(query, ref, masks[:n], second)
        return float(error / (whole - whole.mean()).norm())

    for side, maps, q, r in ((0, a1, x1, x2), (1, a2, x2, x1)):
        for i in range(2):
            n, query, ref = used[2 * side + i], q[i : i + 1], r[i : i + 1]
            # the map of the first `n` masks (x2 explained for s(x1, .))
            assert torch.allclose(maps[i], formula(query, ref, masks[:n], side == 1), atol=1e-12)
            # stopped where the standard error fell to the tolerance, and not a batch before
            assert error_ratio(query, ref, n, side == 1) <= 0.3
            assert n == 200 or error_ratio(query, ref, n - 50, side == 1) > 0.3
    # tolerance 0 never stops early; no tolerance uses every mask
    x = x1[:1]
    rise.attribute(x, (x2[:1],), n_masks=300, seed=3, stop_tolerance=0.0)
    assert rise.masks_used == [300]
    rise.attribute(x, (x2[:1],), n_masks=300, seed=3)
    assert rise.masks_used == [300]


def test_rise_errors(region_sim):
    rise = SimilarityRISE(region_sim)
    x = faces(2)
    cases = [
        (lambda: rise.attribute(x[0], (x,)), "inputs must be images"),
        (lambda: rise.attribute(x, (faces(3),)), "cannot pair 2 queries with 3 references"),
        (lambda: rise.attribute(x), "needs a reference"),
        (lambda: rise.attribute(x, (x, x)), "exactly one tensor"),
        (lambda: rise.attribute((x, x, x)), "pair"),
        (lambda: rise.attribute((x, x), (x,)), "must be None"),
        (lambda: rise.attribute((x, faces(3)), n_masks=2), "same batch size"),
        (lambda: rise.attribute(x, (region_sim.embed(x),), n_reference_masks=2), "as images"),
        (lambda: rise.attribute(x, (x,), mask_probability=0.0), "mask_probability"),
        (lambda: rise.attribute(x, (x,), n_masks=0), "n_masks"),
        (lambda: rise.attribute(x, (x,), mask_cells=(2, 0)), "mask_cells"),
        (lambda: rise.attribute(x, (x,), perturbations_per_eval=0), "perturbations_per_eval"),
        (lambda: rise.attribute(x, (x,), stop_tolerance=-1.0), "stop_tolerance"),
        (lambda: rise.attribute(x, (x,), stop_tolerance=float("nan")), "stop_tolerance"),
        (lambda: rise.attribute(x, (x,), baselines=torch.zeros(3, 1, SIZE, SIZE)), "broadcast"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match="callable"):
        SimilarityRISE(3)


def test_metric_and_rise_leave_the_model_as_found():
    embedder = RegionEmbedder()
    embedder.train()
    embedder.linear.bias.requires_grad_(False)
    embedder.linear.weight.grad = torch.ones_like(embedder.linear.weight)
    sim = SiameseSimilarity(embedder)
    before = snapshot(sim)
    x = faces(2)
    maps = SimilarityRISE(sim).attribute((x, x.flip(0)), n_masks=20, n_reference_masks=2, seed=0)
    insertion_deletion(sim, x, maps[0], x.flip(0), n_steps=4)
    with pytest.raises(ValueError):
        insertion_deletion(sim, x, maps[0][:1], x, n_steps=4)
    assert_unchanged(sim, before)


# ---------------------------------------------- sliding window (SANE) = Captum Occlusion


def test_captum_occlusion_through_the_wrapper_is_the_sliding_window_method(region_sim):
    x, ref = faces(1), faces(1, seed=1)
    window, stride = 8, 4
    attr = Occlusion(region_sim).attribute(
        x,
        sliding_window_shapes=(1, window, window),
        strides=stride,
        baselines=0.0,
        additional_forward_args=(ref,),
        perturbations_per_eval=8,
    )
    # SANE's sliding window: occlude each window, score against the fixed reference;
    # each pixel gets the mean drop s(x) - s_k over the windows that cover it
    s0 = region_sim(x, ref)
    total = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    count = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    for top in range(0, SIZE - window + 1, stride):
        for left in range(0, SIZE - window + 1, stride):
            w = torch.zeros(SIZE, SIZE, dtype=torch.float64)
            w[top : top + window, left : left + window] = 1
            s_k = region_sim(x * (1 - w), ref)
            total += (s0 - s_k) * w
            count += w
    # (Captum 0.9's Occlusion returns float32 even for a float64 model)
    assert torch.allclose(attr[0, 0].double(), total / count, atol=1e-6)


def test_occlusion_variable_reference_recipe(region_sim):
    x, refs = faces(1), faces(3, seed=1)  # refs: three masked versions of a reference
    kwargs = {"sliding_window_shapes": (1, 8, 8), "strides": 4, "perturbations_per_eval": 8}
    averaged = (
        Occlusion(region_sim)
        .attribute(x.expand(3, -1, -1, -1), additional_forward_args=(refs,), **kwargs)
        .mean(0)
    )
    each = [
        Occlusion(region_sim).attribute(x, additional_forward_args=(refs[k : k + 1],), **kwargs)[0]
        for k in range(3)
    ]
    assert torch.allclose(averaged, torch.stack(each).mean(0), atol=1e-6)
