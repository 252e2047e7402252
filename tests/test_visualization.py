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
    fig = visualize_pair(x1, x2, maps, index=1, suptitle="s = 0.5", path=path)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 1000
    assert len(fig.axes) >= 6  # 2 rows x (images + 2 methods), plus colorbars if any
    titles = [ax.get_title() for ax in fig.axes]
    assert "input" in titles and "layer" in titles and "(empty map)" in titles  # image 2's layer map
    fig2 = visualize_pair(x1, x2, maps["input"], show_images=False)
    assert [ax.get_title() for ax in fig2.axes][:2] == ["image 1", "image 2"]
    with pytest.raises(TypeError, match="must be a pair"):
        visualize_pair(x1, x2, {"bad": (maps["input"][0],)})
    with pytest.raises(ValueError, match="empty"):
        visualize_pair(x1, x2, {})
