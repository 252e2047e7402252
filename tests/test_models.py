import pytest
import torch

from captum_similarity.models import SimpleCNN, TokenGrid, ViTEmbedder
from conftest import REFERENCE_KINDS, make_reference_model


@pytest.mark.parametrize("kind", REFERENCE_KINDS + ["cnn_nobias"])
def test_reference_models_embed(kind, images):
    model = make_reference_model(kind)
    out = model(images(3))
    assert out.shape == (3, model.embedding_dim)
    assert torch.isfinite(out).all()
    # embeddings depend on the input (no degenerate constant network)
    assert not torch.allclose(out[0], out[1])


def test_bias_free_cnn_is_positively_homogeneous(images):
    model = make_reference_model("cnn_nobias")
    x = images(2)
    torch.testing.assert_close(model(3.0 * x), 3.0 * model(x))
    assert all(p.dim() > 1 for p in model.parameters())


def test_cnn_options():
    assert SimpleCNN(head="identity", widths=(4, 8)).embedding_dim == 8
    x = torch.rand(1, 3, 16, 16)
    assert SimpleCNN(pool="max", widths=(4, 8), embedding_dim=5)(x).shape == (1, 5)
    with pytest.raises(ValueError, match="pool"):
        SimpleCNN(pool="median")
    with pytest.raises(ValueError, match="head"):
        SimpleCNN(head="mlp")


def test_token_grid_layout():
    grid = TokenGrid((2, 3), num_prefix_tokens=1)
    tokens = torch.arange(2 * 7 * 4, dtype=torch.float32).reshape(2, 7, 4)
    out = grid(tokens)
    assert out.shape == (2, 4, 2, 3)
    # patch token k (after the prefix) sits at row k // 3, column k % 3
    torch.testing.assert_close(out[1, :, 1, 2], tokens[1, 1 + 5])
    with pytest.raises(ValueError, match=r"expected tokens of shape \(N, 7, C\)"):
        grid(tokens[:, :6])


def test_vit_grid_and_errors(images):
    vit = make_reference_model("vit")
    assert vit.grid_size == (4, 4)
    captured = []
    handle = vit.blocks[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        vit(images(2))
    finally:
        handle.remove()
    assert vit.token_grid(captured[0]).shape == (2, 48, 4, 4)
    with pytest.raises(ValueError, match="built for"):
        vit(images(1, size=40))
    with pytest.raises(ValueError, match="divisible"):
        ViTEmbedder(image_size=30, patch_size=8)
