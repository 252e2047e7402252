import pytest
import torch

from captum_similarity import SiameseSimilarity
from captum_similarity.demo import main, run_stereo
from captum_similarity.explainers import explain_pair, explainers, register
from captum_similarity.training.demo_models import demo_embedder
from conftest import make_reference_model


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_SIMILARITY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_demo_embedder_is_cached(tmp_cache):
    model, info = demo_embedder(steps=2)
    assert not info["loaded_from_cache"] and 0.0 <= info["stereo_top1"] <= 1.0
    again, info2 = demo_embedder(steps=2)
    assert info2["loaded_from_cache"] and info2["cache_file"] == info["cache_file"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(2, 3, 48, 48)
    assert model(x).shape == (2, 64)


@pytest.mark.slow
def test_demo_writes_figures(tmp_cache, tmp_path, capsys):
    """The README's main job end to end (two explainers to keep CI short)."""
    out = tmp_path / "figs"
    fast = ["Captum LayerGradCam", "Captum Saliency (SmoothGrad)"]
    main(["--out", str(out), "--steps", "2", "--orl", str(tmp_path / "no_orl"), "--methods", *fast])
    printed = capsys.readouterr().out
    names = ["stereo_match.png", "stereo_mismatch.png", "gallery_top_hits.png", "attributes.png"]
    # the attribute section: SANE's explanation of the attribute world's pairs, one per pair
    explained = printed.split("explained by: ")[1].splitlines()[0].split(", ")
    assert len(explained) == 4 and all(name for name in explained)
    try:
        import captum_similarity.models.dlib_resnet as dlib_resnet

        dlib_resnet.dlib_model_path()
        names.append("faces_astronaut.png")
    except ImportError:
        assert "face section skipped" in printed
    for name in names:
        assert (out / name).stat().st_size > 10_000
        assert name in printed
    report = run_stereo(out, methods=["Captum LayerGradCam"], steps=2)
    assert report["embedder"]["loaded_from_cache"]
    assert len(report["gallery_scores"]) >= 5


def test_registry_runs_every_explainer_with_matching_shapes(images, monkeypatch):
    monkeypatch.setattr("captum_similarity.explainers.RISE_MASKS", 50)  # the registered 500 take seconds here
    model = make_reference_model("cnn")
    sim = SiameseSimilarity(model)
    x1, x2 = images(2), images(2, seed=1)
    maps = explain_pair(sim, x1, x2, layer=model.features[-1])
    assert set(maps) == set(explainers())
    bilrp_grid = (32 // (32 // 12),) * 2  # its patch grid
    for name, (a1, a2) in maps.items():
        assert a1.shape[0] == 2 and a2.shape[0] == 2, name
        assert a1.shape[-2:] in {x1.shape[-2:], (8, 8), bilrp_grid}, name
    no_layer = explain_pair(sim, x1, x2)
    assert not any(explainers()[n].needs_layer for n in no_layer)
    no_baselines = explain_pair(sim, x1, x2, layer=model.features[-1], include_baselines=False)
    assert "Random map (baseline)" in maps and "Random map (baseline)" not in no_baselines
    assert set(no_baselines) == {n for n, spec in explainers().items() if not spec.baseline}
    with pytest.raises(ValueError, match="unknown explainers"):
        explain_pair(sim, x1, x2, methods=["nope"])
    with pytest.raises(ValueError, match="already registered"):
        register("Captum LRP")(lambda *a: a)
