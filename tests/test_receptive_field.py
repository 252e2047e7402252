"""Receptive fields read off the graph, disjoint packing of local seeds, and
PAIR-X per-match maps from packed or windowed backward passes: against
brute-force supports and one-seed-at-a-time propagation."""

import itertools

import pytest
import torch
from torch import nn

from captum_similarity import PairwiseIntermediateMatching
from captum_similarity.lrp.ops import receptive_field
from captum_similarity.lrp.seeds import disjoint_colouring
from captum_similarity.lrp import LRPEngine
from captum_similarity.lrp import engine as engine_module
from captum_similarity.lrp.engine import RelevancePass
from conftest import local_seeds, make_reference_model


class _Subsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1::2, :-1]


def _windowed_stack(pool: nn.Module, dilation: int = 1) -> nn.Sequential:
    """Every kind of sliding window the walk reads: padding, stride, dilation,
    pooling, a strided slice, a 1x1 stride-2 conv, a non-square kernel."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        pool,
        nn.Conv2d(3, 4, 5, stride=2, padding=1, dilation=dilation),
        nn.Sigmoid(),
        _Subsample(),
        nn.Conv2d(4, 4, 1, stride=2),
        nn.AvgPool2d(3, stride=1, padding=1),
        nn.Conv2d(4, 2, (3, 2), padding=(1, 0)),
    ).double()
    for p in model.parameters():
        p.requires_grad_(False)
        p.abs_().add_(0.1)  # positive weights and inputs: every path carries gradient
    return model


def _support_box(grad: torch.Tensor):
    """First and last non-zero position per axis of ``grad`` ``(C, H, W)``."""
    hit = grad.abs().sum(0) > 0
    rows = torch.nonzero(hit.any(1)).flatten()
    cols = torch.nonzero(hit.any(0)).flatten()
    return [[int(rows.min()), int(rows.max())], [int(cols.min()), int(cols.max())]]


@pytest.mark.parametrize("dilation", [1, 2])
def test_receptive_field_is_the_support_of_each_cell(dilation):
    x = torch.rand(1, 2, 121, 118, dtype=torch.float64, requires_grad=True)
    # with average pooling every position of a window carries gradient
    out = _windowed_stack(nn.AvgPool2d(2), dilation)(x)
    field = receptive_field(out, [x])
    assert field is not None
    # max pooling reads the same windows (its gradient picks one position of each)
    assert receptive_field(_windowed_stack(nn.MaxPool2d(2), dilation)(x), [x]) == field
    h, w = out.shape[-2:]
    cells = [(0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1)]
    boxes = field.boxes(torch.tensor(cells))
    for (i, j), box in zip(cells, boxes):
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        support = _support_box(grad[0])
        if (i, j) == (h // 2, w // 2):  # windows inside every map: exact
            assert box.tolist() == support
        else:  # at the border, padding (and a dilated kernel's gaps) read nothing
            assert all(b[0] <= s[0] and s[1] <= b[1] for b, s in zip(box.tolist(), support))


@pytest.mark.parametrize(
    "build",
    [
        lambda x: x * x.mean((2, 3), keepdim=True),  # a gate broadcast over space
        lambda x: nn.functional.interpolate(x, scale_factor=2.0),
        lambda x: x.flatten(2).transpose(1, 2).softmax(1).transpose(1, 2).reshape(x.shape),
        lambda x: nn.functional.batch_norm(x, None, None, training=True),
        lambda x: x.roll(1, dims=2),
    ],
    ids=["spatial-broadcast", "upsample", "reshape", "train-batchnorm", "roll"],
)
def test_operations_of_unknown_or_global_reach_give_none(build):
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    conv = nn.Conv2d(3, 3, 3, padding=1).double().requires_grad_(False)
    assert receptive_field(conv(x), [x]) is not None
    assert receptive_field(conv(build(x)), [x]) is None


def test_colouring_never_groups_overlapping_boxes():
    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 40, (3, 12, 2), generator=g)
    boxes = torch.stack((first, first + torch.randint(0, 15, (3, 12, 2), generator=g)), -1)
    boxes[0, 5] = torch.tensor([[3, 2], [0, 50]])  # empty: overlaps nothing
    colours = disjoint_colouring(boxes)
    assert colours.shape == (3, 12)
    for b in range(3):
        for i in range(12):
            for j in range(i + 1, 12):
                a, c = boxes[b, i], boxes[b, j]
                nonempty = bool((a[:, 0] <= a[:, 1]).all() and (c[:, 0] <= c[:, 1]).all())
                overlap = bool(((a[:, 0] <= c[:, 1]) & (c[:, 0] <= a[:, 1])).all())
                if nonempty and overlap:
                    assert colours[b, i] != colours[b, j]
    # intervals along one axis: as many groups as the largest clique
    line = torch.tensor([[[0, 4]], [[5, 9]], [[3, 6]], [[10, 12]], [[8, 11]]])
    assert int(disjoint_colouring(line).max()) + 1 == 2


def test_colouring_many_boxes_stays_valid():
    # beyond the exact search (64 boxes): DSatur's colouring alone, still valid
    g = torch.Generator().manual_seed(2)
    first = torch.randint(0, 500, (1, 1200, 1), generator=g)
    boxes = torch.stack((first, first + 3), -1)
    colours = disjoint_colouring(boxes)[0]
    order = first[0, :, 0].argsort()
    starts, groups = first[0, order, 0], colours[order]
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            if starts[j] > starts[i] + 3:
                break
            assert groups[i] != groups[j]


def _chromatic_number(overlap):
    """Fewest groups, by trying every assignment."""
    k = len(overlap)
    for colours in range(1, k + 1):
        for assignment in itertools.product(range(colours), repeat=k):
            if all(
                assignment[i] != assignment[j]
                for i in range(k)
                for j in range(i + 1, k)
                if overlap[i][j]
            ):
                return colours
    return k


def test_colouring_uses_the_fewest_groups_on_small_sets():
    g = torch.Generator().manual_seed(1)
    first = torch.randint(0, 60, (20, 7, 2), generator=g)
    boxes = torch.stack((first, first + 25), -1)  # squares of PAIR-X-like footprints
    colours = disjoint_colouring(boxes)
    for b in range(20):
        a = boxes[b]
        overlap = (
            ((a[:, None, :, 0] <= a[None, :, :, 1]) & (a[None, :, :, 0] <= a[:, None, :, 1]))
            .all(-1)
            .tolist()
        )
        assert int(colours[b].max()) + 1 == _chromatic_number(overlap)


@pytest.mark.parametrize("kind,layer", [("resnet", "layer2"), ("efficientnet", "blocks.2")])
@pytest.mark.parametrize("batching", ["packed", "vmap"])
def test_packed_seeds_equal_one_at_a_time(kind, layer, batching, monkeypatch):
    model = make_reference_model(kind)
    x = torch.rand(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    run = LRPEngine(model, "epsilon_plus").forward(x, record=[layer])
    # squeeze-excitation gates are held constant by the rules: the map stays local
    assert run.receptive_field(layer) is not None
    seeds = local_seeds(run.activation(layer).detach(), 8)
    expected = torch.stack([run.propagate(s, source=layer) for s in seeds])
    calls = []
    original = RelevancePass.propagate

    def counting(self, seed, *args, **kwargs):
        # backward passes: K for a vmapped batch; "each" counts its own calls
        calls.append({"vmap": seed.shape[0], "each": 0}.get(kwargs.get("batching"), 1))
        return original(self, seed, *args, **kwargs)

    monkeypatch.setattr(RelevancePass, "propagate", counting)
    packed = run.propagate_each(seeds, layer, batching=batching)
    assert sum(calls) < len(seeds)  # seeds far apart shared backward passes
    torch.testing.assert_close(packed, expected, rtol=1e-9, atol=1e-15)


def test_global_graph_falls_back_to_one_pass_per_seed():
    model = make_reference_model("vit")
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    run = LRPEngine(model, "epsilon_plus").forward(x, record=["blocks.1"])
    assert run.receptive_field("blocks.1") is None  # attention reaches every token
    raw = run.activation("blocks.1").detach()
    seeds = torch.zeros((3, *raw.shape), dtype=raw.dtype)
    for k in range(3):
        seeds[k, :, 1 + k] = raw[:, 1 + k]
    expected = torch.stack([run.propagate(s, source="blocks.1") for s in seeds])
    torch.testing.assert_close(run.propagate_each(seeds, "blocks.1"), expected)


@pytest.mark.parametrize("batching", ["windowed", "vmap"])
def test_pairx_maps_from_shared_passes_equal_one_seed_at_a_time(batching, monkeypatch):
    model = make_reference_model("resnet")
    g = torch.Generator().manual_seed(2)
    x1, x2 = (torch.rand(2, 3, 96, 96, dtype=torch.float64, generator=g) for _ in range(2))
    pairx = PairwiseIntermediateMatching(model, "layer2", batching=batching)
    dense, windowed = [], []
    original, original_windowed = RelevancePass.propagate, engine_module.windowed_backward

    def counting(self, seed, source=None, *args, **kwargs):
        if source is not None:  # the other one reaches the layer
            dense.append({"vmap": seed.shape[0], "each": 0}.get(kwargs.get("batching"), 1))
        return original(self, seed, source, *args, **kwargs)

    def counting_windowed(*args, **kwargs):
        windowed.append(1)
        return original_windowed(*args, **kwargs)

    monkeypatch.setattr(RelevancePass, "propagate", counting)
    monkeypatch.setattr(engine_module, "windowed_backward", counting_windowed)
    results = pairx.explain(x1, x2, k=6)
    monkeypatch.undo()
    if batching == "vmap":  # packed dense passes, vmapped
        assert not windowed and 0 < sum(dense) < 6
    else:  # one windowed pass per batch of pairs, no dense pass
        assert windowed and not dense
    engine = LRPEngine(model, "epsilon_plus")
    for p, result in enumerate(results):
        for x, cells, maps in (
            (x1, result.cells1, result.pixel_relevance1),
            (x2, result.cells2, result.pixel_relevance2),
        ):
            run = engine.forward(x[p : p + 1], record=["layer2"])
            raw = run.activation("layer2").detach()
            for j, (row, col) in enumerate(cells[: len(maps)].tolist()):
                seed = torch.zeros_like(raw)
                seed[:, :, row, col] = raw[:, :, row, col]
                expected = run.propagate(seed, source="layer2")[0]
                torch.testing.assert_close(maps[j], expected, rtol=1e-9, atol=1e-15)


def test_propagate_each_rejects_bad_seeds():
    model = make_reference_model("resnet")
    run = LRPEngine(model).forward(torch.rand(2, 3, 32, 32, dtype=torch.float64), record=["layer2"])
    raw = run.activation("layer2").detach()
    with pytest.raises(ValueError, match="seeds must have shape"):
        run.propagate_each(raw, "layer2")  # no seed dimension
    with pytest.raises(TypeError, match="seeds must be a Tensor"):
        run.propagate_each([raw], "layer2")
    with pytest.raises(ValueError, match="not recorded"):
        run.propagate_each(raw[None], "layer3")
