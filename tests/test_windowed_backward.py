"""Backward passes on receptive-field windows: against autograd's dense
backward, one seed at a time (plain graphs and LRP relevance graphs)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_similarity.lrp.ops import receptive_field
from captum_similarity.lrp.ops import windowable, windowed_backward
from captum_similarity.lrp.windows import Windows, crop, paste
from captum_similarity.lrp import LRPEngine, ZBox
from captum_similarity.lrp import engine as engine_module
from captum_similarity.lrp import seeds as seeds_module
from captum_similarity.lrp.composites import epsilon_plus
from captum_similarity.lrp.engine import RelevancePass
from captum_similarity.models.dlib_resnet import DlibFaceResNet
from conftest import local_seeds, make_reference_model


class _EveryNode(nn.Module):
    """A graph with every node kind the windowed pass reproduces: convolutions
    (padding, stride, dilation, groups, a non-square kernel, 1-D is covered by
    the same code), max pooling with padding, average pooling (padded, counting
    the padding), strided and channel slices, channel concatenation, sums,
    differences, products with saved tensors (one broadcast over channels),
    negation, ReLU, aliases and constant padding (channels, rows and columns,
    one of them cropped)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=3)
        self.c3 = nn.Conv2d(8, 4, (3, 2), padding=(1, 0))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.c1(x))
        a = F.max_pool2d(a, 3, stride=2, padding=1)
        b = F.pad(self.c2(a), (1, 0, 0, 1))  # padding next to a convolution
        gate = b[:, :1].clone()  # channel slice, a product broadcast over channels
        b = F.relu(b) * gate - 0.5 * b
        b = -b[:, :, 1::2, ::2]  # strided slices, negation
        p = F.pad(b, (1, 0, -1, 2, 0, 2))  # constant padding: columns, a cropped row, channels
        b = p[:, :6] + p[:, 2:]
        c = F.avg_pool2d(torch.cat([b, b[:, 2:4] * b[:, :2]], dim=1), 3, 1, 1)
        c = F.relu(-c) + c  # a sum whose summands both read c
        return self.c3(c.view_as(c))


def _grad_per_seed(out, x, seeds):
    return torch.stack([torch.autograd.grad(out, x, s, retain_graph=True)[0] for s in seeds])


def _windows_of(seeds: torch.Tensor, owned: bool = False):
    """Windows holding each (seed, row)'s cells, as the engine builds them."""
    k, n = seeds.shape[:2]
    support = seeds.ne(0).any(2)
    units = support.flatten(2).any(2).nonzero()
    cells = support[units[:, 0], units[:, 1]]
    rows_hit = cells.any(2).float().argmax(1)
    cols_hit = cells.any(1).float().argmax(1)
    first = torch.stack((rows_hit, cols_hit), 1)
    size = [3, 2]  # each test seed fits in 3 x 2 cells
    values = crop(seeds.flatten(0, 1), units[:, 0] * n + units[:, 1], first, size)
    return units, Windows(values, first, units[:, 1], owned=owned)


def _scatter(units, windows, shape):
    out = torch.zeros(shape, dtype=windows.values.dtype)
    for (k, row), values, origin in zip(units.tolist(), windows.values, windows.origin.tolist()):
        paste(out[k, row], values, origin)
    return out


@pytest.mark.parametrize("owned", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_windowed_backward_equals_autograd_on_every_node_kind(layout, owned):
    # owned: the pass may overwrite the seeds' windows; every node then writes in
    # place where nothing else reads its windows (a sum hands both summands the
    # same windows, a product of two inputs reads them twice)
    model = _EveryNode().double()
    x = torch.rand(2, 3, 45, 38, dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_(True)
    out = model(x)
    assert windowable(out, [x]) and receptive_field(out, [x]) is not None
    g = torch.Generator().manual_seed(0)
    _, _, h, w = out.shape
    seeds = torch.zeros((5, *out.shape), dtype=out.dtype)
    corners = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0)]
    for k in range(5):
        for r in range(2):
            i, j = corners[k] if k < 4 else (h // 2, w // 2)
            seeds[k, r, :, i, j] = torch.rand(out.shape[1], generator=g, dtype=out.dtype)
    seeds[4, 0, :, 1:4, 2:4] = 1.0  # a 3 x 2 block
    seeds[3, 1] = 0  # a row without seed
    units, windows = _windows_of(seeds, owned)
    given = windows.values.clone()
    (reached,) = windowed_backward(out, [x], windows)
    got = _scatter(units, reached, (5, *x.shape))
    torch.testing.assert_close(got, _grad_per_seed(out, x, seeds), rtol=1e-12, atol=1e-15)
    if not owned:  # the caller's windows are left as they were
        assert torch.equal(windows.values, given)


@pytest.mark.parametrize(
    "build",
    [
        lambda x, w: torch.sigmoid(F.conv2d(x, w)),  # a node it does not reproduce
        # weights computed from the input (through nodes it accepts)
        lambda x, w: F.conv2d(x, torch.cat([x[:, :, :3, :3], x[:, :, 3:6, :3]])),
        lambda x, w: F.avg_pool2d(F.conv2d(x, w), 2, ceil_mode=True),  # clipped windows
        lambda x, w: (
            F.conv2d(x, w) + F.conv2d(x.detach().requires_grad_(True), w)
        ),  # a foreign leaf
    ],
)
def test_windowable_rejects_graphs_it_would_get_wrong(build):
    x = torch.rand(1, 2, 9, 9, requires_grad=True)
    w = torch.rand(2, 2, 3, 3)
    assert not windowable(build(x, w), [x])


def _local_seeds(activation: torch.Tensor, count: int) -> torch.Tensor:
    seeds = local_seeds(activation, count)
    seeds[0, 0] = 0
    seeds[0, 0, :, 0, 0] = activation[0, :, 0, 0]  # a corner cell
    seeds[1, -1] = 0  # a row without seed
    return seeds


@pytest.mark.parametrize(
    "kind,layer,composite",
    [
        ("resnet", "layer2", "epsilon_plus"),
        ("efficientnet", "blocks.2", "epsilon_plus"),  # signed inputs, squeeze-excitation
        ("cnn", "features.3", "epsilon_plus"),  # max pooling
        ("resnet", "layer2", epsilon_plus(input_rule=ZBox(0.0, 1.0))),  # bound leaves
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_windowed_relevance_equals_one_seed_at_a_time(
    kind, layer, composite, channels_last, monkeypatch
):
    model = make_reference_model(kind)
    x = torch.rand(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    run = LRPEngine(model, composite, channels_last=channels_last).forward(x, record=[layer])
    assert run.input.is_contiguous(memory_format=torch.channels_last) == channels_last
    seeds = _local_seeds(run.activation(layer).detach(), 6)
    expected = torch.stack([run.propagate(s, source=layer) for s in seeds])
    dense = []
    original = RelevancePass.propagate
    monkeypatch.setattr(
        RelevancePass,
        "propagate",
        lambda self, *a, **kw: dense.append(1) or original(self, *a, **kw),
    )
    got = run.propagate_each(seeds, layer)
    assert not dense  # all of it on windows
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-15)
    # windows split into several chunks (memory bound) give the same maps
    monkeypatch.setattr(seeds_module, "WINDOW_BUDGET", 0)
    torch.testing.assert_close(run.propagate_each(seeds, layer), got, rtol=1e-12, atol=1e-15)


def test_windows_covering_more_than_the_dense_passes_fall_back_to_them(monkeypatch):
    model = make_reference_model("resnet")
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    run = LRPEngine(model).forward(x, record=["layer3"])
    raw = run.activation("layer3").detach()  # (1, 64, 8, 8)
    seeds = torch.zeros((3, *raw.shape), dtype=raw.dtype)
    for k in range(3):  # cells at opposite corners: each window spans the whole map
        seeds[k, :, :, 0, k] = raw[:, :, 0, k]
        seeds[k, :, :, 7, 7 - k] = raw[:, :, 7, 7 - k]
    called = []
    monkeypatch.setattr(engine_module, "windowed_backward", lambda *a: called.append(1))
    expected = torch.stack([run.propagate(s, source="layer3") for s in seeds])
    torch.testing.assert_close(run.propagate_each(seeds, "layer3"), expected)
    assert not called


def test_dlib_zero_padded_residuals_run_on_windows():
    """dlib's face ResNet zero-pads the shortcut of its downsampling blocks
    (``F.pad`` on channels, rows and columns): the windows follow it. (Its
    receptive fields outgrow the 150 x 150 input, so the engine itself runs
    dense passes there.)"""
    torch.manual_seed(0)
    model = DlibFaceResNet().double().eval()
    x = torch.rand(2, 3, 150, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    run = LRPEngine(model).forward(x, record=["layer2"])
    src = run.activation("layer2")
    assert run.receptive_field("layer2") is not None and windowable(src, run.leaves)
    seeds = _local_seeds(src.detach(), 3)
    units, windows = _windows_of(seeds)
    reached = windowed_backward(src, run.leaves, windows)
    # the input normalisation's shift rides on a companion leaf (rules.InputAffine)
    for leaf, got in zip(run.leaves, reached):
        got = _scatter(units, got, (3, *x.shape))
        torch.testing.assert_close(got, _grad_per_seed(src, leaf, seeds), rtol=1e-12, atol=1e-15)


def test_crop_and_paste_against_padded_slicing():
    """``crop`` equals slicing a zero-padded copy (broadcast axes kept at size
    1, one-row tensors shared by every window); ``paste`` adds a window back."""
    g = torch.Generator().manual_seed(3)
    full = torch.rand(2, 3, 7, 5, generator=g, dtype=torch.float64)
    rows = torch.tensor([0, 1, 1, 0])
    origin = torch.tensor([[-2, -1], [3, 2], [6, 4], [-9, 0]])  # the last one misses the tensor
    size = (4, 3)
    margin = 10
    padded = F.pad(full, (margin,) * 4)
    expected = torch.stack(
        [
            padded[r, :, y + margin : y + margin + size[0], x + margin : x + margin + size[1]]
            for r, (y, x) in zip(rows.tolist(), origin.tolist())
        ]
    )
    got = crop(full, rows, origin, size)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # an axis of size 1 broadcasts (is not cropped); a single row serves every window
    column = full[:1, :, :, :1]
    padded_column = F.pad(column, (0, 0, margin, margin))
    expected_column = torch.stack(
        [padded_column[0, :, y + margin : y + margin + size[0]] for y in origin[:, 0].tolist()]
    )
    torch.testing.assert_close(crop(column, rows, origin, size), expected_column, rtol=0, atol=0)
    target = torch.zeros_like(full[0])
    for u in (0, 1):
        paste(target, got[u], origin[u].tolist())
    back = torch.zeros_like(full[0])
    for u in (0, 1):
        part = padded[rows[u]].clone()
        inside = torch.zeros_like(part)
        y, x = (origin[u] + margin).tolist()
        inside[:, y : y + size[0], x : x + size[1]] = 1
        back += (part * inside)[:, margin:-margin, margin:-margin]
    torch.testing.assert_close(target, back, rtol=0, atol=0)


def _conv_node(run):
    from captum_similarity.lrp.graph import topological

    return next(n for n in topological(run.output.grad_fn) if n.name() == "ConvolutionBackward0")


def test_a_missing_private_autograd_attribute_means_dense_passes_never_an_error():
    """The op table reads private autograd attributes (``node._saved_stride``);
    on a PyTorch that lacks one, the walks fall back to dense passes."""
    from captum_similarity.lrp import ops

    model = make_reference_model("resnet")
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    run = LRPEngine(model).forward(x, record=["layer2"])
    seeds = local_seeds(run.activation("layer2").detach(), 3)
    expected = torch.stack([run.propagate(s, source="layer2") for s in seeds])
    original = ops.handler_for(_conv_node(run))
    missing = lambda node, *args: node._saved_attribute_of_another_version  # noqa: E731
    try:
        # nothing readable: no receptive field, one dense pass per seed
        ops.register_op("ConvolutionBackward0", ops.OpHandler(missing, missing, missing))
        assert run.receptive_field("layer2") is None
        torch.testing.assert_close(run.propagate_each(seeds, "layer2"), expected)
        # the reach and the check read, the windowed backward does not: packed passes
        broken = ops.OpHandler(original.reach, missing, original.windowable)
        ops.register_op("ConvolutionBackward0", broken)
        assert run.receptive_field("layer2") is not None
        torch.testing.assert_close(run.propagate_each(seeds, "layer2"), expected)
    finally:
        ops.register_op("ConvolutionBackward0", original)
    assert ops.windowable_node(_conv_node(run))


class _Doubling(torch.autograd.Function):
    """A user's own element-wise function (``2 x``), unknown to the table."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_autograd_functions_are_registered_by_class():
    from captum_similarity.lrp import ops
    from captum_similarity.lrp.windows import scaled

    conv = nn.Conv2d(2, 3, 3, padding=1).double().requires_grad_(False)
    x = torch.rand(1, 2, 12, 12, dtype=torch.float64, requires_grad=True)
    out = _Doubling.apply(conv(x))
    assert receptive_field(out, [x]) is None and not windowable(out, [x])
    ops.register_function(
        _Doubling,
        ops.OpHandler(
            reach=lambda node, axes, batch: [(node.next_functions[0][0], axes)],
            backward=lambda node, incoming: [scaled(incoming[0], 2)],
        ),
    )
    field = receptive_field(out, [x])
    assert field is not None and (field.start, field.stop) == ((-1, -1), (1, 1))
    assert windowable(out, [x])
    seed = torch.zeros_like(out)
    seed[0, :, 5, 6] = 1.0
    (dense,) = torch.autograd.grad(out, x, seed, retain_graph=True)
    cells = Windows(seed[:, :, 5:6, 6:7].clone(), torch.tensor([[5, 6]]), torch.tensor([0]))
    (got,) = windowed_backward(out, [x], cells)
    window = torch.zeros_like(x)
    paste(window[0], got.values[0], got.origin[0].tolist())
    torch.testing.assert_close(window, dense)
    with pytest.raises(TypeError, match="autograd.Function"):
        ops.register_function(nn.Conv2d, ops.OpHandler())
