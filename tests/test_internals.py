"""Shared mechanisms: hooks, model state, batching, layer lookup."""

import pytest
import torch
from torch import nn

from captum_similarity._utils.batching import batch_slices
from captum_similarity._utils.hooks import LayerRecorder, recording
from captum_similarity._utils.layers import list_layers, resolve_layer
from captum_similarity._utils.state import preserved_state
from conftest import assert_unchanged, make_reference_model, snapshot


def test_recorder_records_and_always_removes(images):
    model = make_reference_model("cnn")
    before = snapshot(model)
    with recording(model.features[3]) as rec:  # conv 16 -> 32 after the first pool
        model(images(2))
    assert rec.single().shape == (2, 32, 16, 16)
    with pytest.raises(RuntimeError, match="boom"):
        with LayerRecorder(model.features[2]):
            raise RuntimeError("boom")
    with recording(model.features[3], attribute_to_layer_input=True) as rec:
        model(images(1))
        model(images(1))
    assert rec.tensors[0].shape == (1, 16, 16, 16)
    with pytest.raises(RuntimeError, match="ran 2 times"):
        rec.single()
    assert_unchanged(model, before)


def test_preserved_state_restores_on_exception(images):
    model = make_reference_model("resnet").train()
    model.head.weight.requires_grad_(False)
    model.stem[0].weight.grad = torch.ones_like(model.stem[0].weight)
    before = snapshot(model)
    with pytest.raises(ValueError):
        with preserved_state(model, eval_mode=True, freeze=True):
            assert not model.training and not model.layer1[0].bn1.training
            assert not any(p.requires_grad for p in model.parameters())
            model(images(1)).sum()
            raise ValueError("midway")
    assert_unchanged(model, before)


def test_preserved_state_accepts_plain_callables():
    class Scorer:
        """A callable that looks like a module but is not one: left untouched."""

        training = True

        def eval(self):
            self.training = False

        def __call__(self, x):
            return 2 * x

    scorer, ran = Scorer(), []
    with preserved_state(scorer, eval_mode=True, freeze=True):
        ran.append(scorer(3))
        assert scorer.training  # not switched to eval: only nn.Modules are touched
    assert ran == [6] and scorer.training
    with pytest.raises(KeyError):  # exceptions pass through
        with preserved_state(scorer, eval_mode=True):
            raise KeyError("midway")


def test_batch_slices():
    assert list(batch_slices(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(batch_slices(5, None)) == [slice(0, 5)]
    with pytest.raises(ValueError, match="positive integer"):
        list(batch_slices(5, 0))


def test_resolve_layer():
    model = make_reference_model("resnet")
    assert resolve_layer(model, "layer2.0.conv1") is model.layer2[0].conv1
    assert resolve_layer(model, model.layer3) is model.layer3
    with pytest.raises(ValueError, match="no layer named 'layer2.0.conv3'; similar names"):
        resolve_layer(model, "layer2.0.conv3")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="module or a dotted name"):
        resolve_layer(model, 3)
    with pytest.raises(TypeError, match="needs the embedder to be an nn.Module"):
        resolve_layer(lambda x: x, "layer1")


def test_list_layers_shapes_in_execution_order(images):
    model = make_reference_model("cnn")
    before = snapshot(model)
    rows = list_layers(model, images(1))
    names = [r[0] for r in rows]
    assert names.index("features.0") < names.index("features.4") < names.index("head")
    assert dict((r[0], r[2]) for r in rows)["features.4"] == (1, 32, 16, 16)
    assert ("head", "Linear", (1, 32)) in rows
    assert_unchanged(model, before)
