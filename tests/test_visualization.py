import numpy as np
import pytest
import torch
from captum.attr import visualization as viz
from matplotlib.figure import Figure

from captum_similarity import to_visualizer_arrays, visualize_pair


def test_input_attribution_to_hwc():
    attr = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    image = torch.rand(2, 3, 4, 5)
    a, img = to_visualizer_arrays(attr, image, index=1)
    assert a.shape == (4, 5, 3) and img.shape == (4, 5, 3)
    np.testing.assert_allclose(a[2, 3], attr[1, :, 2, 3].numpy())
    np.testing.assert_allclose(img[2, 3], image[1, :, 2, 3].numpy(), rtol=1e-6)


def test_layer_map_is_upsampled_and_grey_image_made_rgb():
    layer_map = torch.ones(1, 1, 2, 2)
    layer_map[..., 0, 0] = 5.0
    grey = torch.linspace(-1, 3, 16).reshape(1, 1, 4, 4)
    a, img = to_visualizer_arrays(layer_map, grey)
    assert a.shape == (4, 4, 1) and img.shape == (4, 4, 3)
    assert a[0, 0, 0] > a[3, 3, 0]  # the hot cell stays top-left
    assert img.min() == 0.0 and img.max() == 1.0  # min-max scaled for display
    np.testing.assert_allclose(img[..., 0], img[..., 2])


def test_output_feeds_captums_visualizer():
    a, img = to_visualizer_arrays(torch.randn(3, 8, 8), torch.rand(3, 8, 8))
    fig, ax = viz.visualize_image_attr(a, img, "blended_heat_map", use_pyplot=False)
    assert fig is not None


def test_bad_shapes():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_visualizer_arrays(torch.rand(1, 4, 4), torch.rand(4, 4, 4))
    with pytest.raises(ValueError, match="attribution has 2 channels"):
        to_visualizer_arrays(torch.rand(2, 4, 4), torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="must be"):
        to_visualizer_arrays(torch.rand(4), torch.rand(3, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        to_visualizer_arrays(np.zeros((3, 4, 4)), torch.rand(3, 4, 4))


def test_pair_figure_rows_and_file(tmp_path):
    x1, x2 = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    maps = {
        "input": (torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16)),
        "layer": (torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),  # an empty map is drawn bare
    }
    path = tmp_path / "pair.png"
    with pytest.warns(UserWarning, match="layer: all-zero map"):
        fig = visualize_pair(x1, x2, maps, index=1, suptitle="s = 0.5", path=path)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 1000
    assert len(fig.axes) == 7  # 2 rows x (images + 2 methods), and the colorbar
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes]
    assert "input" in titles and "layer" in titles and "(empty map)" in titles  # image 2's layer map
    empty = fig.axes[titles.index("(empty map)")]
    assert any("all-zero map" in t.get_text() for t in empty.texts)  # said on the figure
    assert fig.get_supxlabel().startswith("pair 1 of 2")
    assert "share one scale" in " ".join(fig.get_supxlabel().split())
    fig2 = visualize_pair(x1, x2, maps["input"], show_images=False)
    assert [ax.get_title().split("\n")[0] for ax in fig2.axes][:2] == ["image 1", "image 2"]
    with pytest.raises(TypeError, match="must be a pair"):
        visualize_pair(x1, x2, {"bad": (maps["input"][0],)})
    with pytest.raises(ValueError, match="empty"):
        visualize_pair(x1, x2, {})


def test_pair_normalisation_shares_one_scale_with_captums_outlier_rule():
    from captum.attr._utils.visualization import _cumulative_sum_threshold

    from captum_similarity.figures.annotate import pair_scale

    g = torch.Generator().manual_seed(0)
    a1 = torch.randn(1, 1, 8, 8, generator=g)
    a2 = 0.1 * torch.randn(1, 1, 8, 8, generator=g)  # ten times weaker
    both = np.concatenate([a1.numpy().ravel(), a2.numpy().ravel()])
    assert pair_scale(both, 2.0) == pytest.approx(_cumulative_sum_threshold(np.abs(both), 98.0))
    x = torch.rand(1, 3, 8, 8)
    fig = visualize_pair(x, x, {"m": (a1, a2)}, sign="all", show_images=False)
    panels = [ax for ax in fig.axes if ax.images]
    shown = [np.abs(np.asarray(ax.images[-1].get_array())).max() for ax in panels]
    assert shown[0] > 5 * shown[1]  # the weak map stays weak on the shared scale
    bar = fig.axes[-1]
    assert "red raises the score" in bar.get_ylabel() and bar.get_ylim() == (-1.0, 1.0)
    own = visualize_pair(x, x, {"m": (a1, a2)}, sign="all", show_images=False, normalize="image")
    shown = [np.abs(np.asarray(ax.images[-1].get_array())).max() for ax in own.axes if ax.images]
    assert shown == [pytest.approx(1.0), pytest.approx(1.0)]  # each saturates at its own scale
    with pytest.raises(ValueError, match="normalize"):
        visualize_pair(x, x, {"m": (a1, a2)}, normalize="global")


def test_nan_map_is_drawn_bare_with_a_warning_on_the_panel():
    x = torch.rand(1, 3, 8, 8)
    bad = torch.full((1, 1, 8, 8), float("nan"))
    with pytest.warns(UserWarning, match="NaN"):
        fig = visualize_pair(x, x, {"m": (bad, torch.rand(1, 1, 8, 8))}, show_images=False)
    assert any("NaN" in t.get_text() for t in fig.axes[0].texts)
