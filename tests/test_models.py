"""Model registry, weights loading (never unpickling code), input transform, augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision.models.vgg import cfgs

from fer_ray.choices import MODEL_NAMES
from fer_ray.models import MODELS, build_model, load_state_dict, parameter_counts
from fer_ray.models.forward import run_batches, tta_views
from fer_ray.models.inputs import Normalization, to_model_input
from fer_ray.models.vgg import VGG16_LAYERS
from fer_ray.training.augment import Augment, gaussian_blur, augment_batch


def test_registry_matches_the_names_the_cli_offers():
    assert sorted(MODELS) == sorted(MODEL_NAMES)


@pytest.mark.parametrize("name,size,width", [("small_cnn", 48, 128), ("vgg16", 48, 4096),
                                             ("vgg16_bn", 48, 4096), ("resnet50", 48, 2048),
                                             ("resnet50", 128, 2048), ("fast_cnn_s", 48, 192),
                                             ("fast_cnn", 48, 256), ("fast_cnn_m", 48, 320),
                                             ("fast_cnn_l", 64, 384)])
def test_registry_builds_grey_models(name, size, width):
    model = build_model(name, num_classes=7, input_size=size, in_channels=1).eval()
    x = torch.randn(2, 1, size, size)
    assert model(x).shape == (2, 7)
    assert model.features(x).shape == (2, width)
    assert model.stage_names()[-1] == "classifier"


def test_vgg16_matches_the_paper_shape():
    model = build_model("vgg16")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert [lin.out_features for lin in linears] == [4096, 4096, 7]
    assert linears[0].in_features == 512  # no 25,088-wide layer at 48 px
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model("vgg16_bn").modules())
    assert list(VGG16_LAYERS) == cfgs["D"]  # our written-out widths are torchvision's VGG-16


def test_models_run_in_channels_last_layout():
    model = build_model("small_cnn").eval()
    x = torch.randn(4, 1, 48, 48)
    expected = model(x)
    fast = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-5)


def test_fast_cnn_widths_trade_size_for_speed():
    counts = [parameter_counts(build_model(n))["total"] for n in ("fast_cnn_s", "fast_cnn", "fast_cnn_m", "fast_cnn_l")]
    assert counts == sorted(counts) and counts[2] * 4 < 10 * 1024 * 1024  # fp32 weights fit a 10 MB wheel
    model = build_model("fast_cnn")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(c.kernel_size == (3, 3) and c.groups == 1 for c in convs)
    assert [c.out_channels for c in convs[::2]] == [32, 64, 128, 256]
    with pytest.raises(ValueError, match="at least 8 px"):
        build_model("fast_cnn", input_size=7)


def test_bf16_autocast_follows_the_cpu():
    from fer_ray.models.forward import autocast, cpu_has_bf16

    with autocast(torch.device("cpu"), amp=True):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    with autocast(torch.device("cpu"), amp=False):
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype == torch.float32


def test_resnet_stem_depends_on_input_size():
    small, large = build_model("resnet50", input_size=48), build_model("resnet50", input_size=192)
    assert small.backbone.stem[0].stride == (1, 1) and small.backbone.stem[0].in_channels == 1
    assert large.backbone.stem[0].stride == (2, 2)


def test_unknown_model_and_too_small_vgg():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="at least 32"):
        build_model("vgg16", input_size=24)
    with pytest.raises(ValueError, match="input size 257 is above the largest fer-ray takes, 256 px"):
        build_model("small_cnn", input_size=257)  # (train --input-size; an artifact is held to it too)


def test_local_weights_safetensors_and_state_dict(tmp_path):
    source = build_model("small_cnn")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    for path in ("w.safetensors", "w.pt"):
        loaded = build_model("small_cnn", weights=str(tmp_path / path))
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, state[k])
    assert parameter_counts(source)["frozen"] == 0


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"w": _Exploit()}, fh)
    with pytest.raises(ValueError, match="evil.pt is not a safetensors file or a torch state dict .*Unpickling"):
        load_state_dict(str(path))
    with pytest.raises(FileNotFoundError):
        load_state_dict(str(tmp_path / "missing.safetensors"))


def test_foreign_weights_files_are_one_clear_error(tmp_path):
    """Each was a different traceback (KeyError, EOFError, SafetensorError, TypeError...) from
    the driver's start check; the format is told by content, so a misnamed file still loads."""
    state = build_model("small_cnn").state_dict()
    files = {"text.pt": b"hello", "empty.pt": b"", "bad.safetensors": b"\x10\0\0\0\0\0\0\0{not json}xxxxx"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name} is not a safetensors file or a torch state dict"):
            load_state_dict(str(tmp_path / name))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="holds a Tensor, not a state dict of tensors"):
        load_state_dict(str(tmp_path / "tensor.pt"))
    save_file(dict(state), str(tmp_path / "really-safetensors.pt"))
    torch.save(dict(state), tmp_path / "really-torch.safetensors")
    for name in ("really-safetensors.pt", "really-torch.safetensors"):
        assert set(load_state_dict(str(tmp_path / name))) == set(state)


def test_to_model_input_normalises_and_upscales():
    images = torch.full((3, 48, 48), 128, dtype=torch.uint8)
    x = to_model_input(images, 48, Normalization(0.5, 0.25))
    assert x.shape == (3, 1, 48, 48) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-6)
    assert to_model_input(images, 96, Normalization(0.5, 0.25)).shape == (3, 1, 96, 96)


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.randn(16, 1, 48, 48)
    aug = Augment(erase_p=1.0)
    a = augment_batch(x, aug, torch.Generator().manual_seed(3))
    b = augment_batch(x, aug, torch.Generator().manual_seed(3))
    c = augment_batch(x, aug, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert (a == 0).any()  # random erasing zeroed some pixels
    flip_only = Augment(flip=True, rotate_deg=0, scale=0, translate_px=0)
    y = augment_batch(x, flip_only, torch.Generator().manual_seed(0))
    for i in range(len(x)):  # every image is either itself or its mirror
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))


def test_photo_degradation_touches_only_the_chosen_faces_and_keeps_their_content():
    """photo_p degrades like a photo's face: some faces change, others stay; a blur of sigma 0 is none."""
    x = torch.randn(64, 1, 48, 48)
    photo_only = Augment(flip=False, rotate_deg=0, scale=0, translate_px=0, photo_p=0.5)
    y = augment_batch(x, photo_only, torch.Generator().manual_seed(0))
    changed = [not torch.equal(y[i], x[i]) for i in range(len(x))]
    assert 10 < sum(changed) < 54 and torch.isfinite(y).all()
    assert torch.equal(gaussian_blur(x, torch.zeros(len(x))), x)
    flat = torch.full((2, 1, 48, 48), 0.7)  # blurring keeps a flat image's level: the kernel sums to 1
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 1.0])), flat, atol=1e-5)
    smooth = gaussian_blur(x[:2], torch.tensor([1.0, 1.0]))
    assert smooth.std() < 0.6 * x[:2].std()  # white noise loses most of its variance


def test_tta_views_and_batched_probabilities():
    x = torch.randn(2, 1, 48, 48)
    assert len(tta_views(x, "none")) == 1 and len(tta_views(x, "flip")) == 2
    crops = tta_views(x, "tencrop")
    assert len(crops) == 10 and all(c.shape == x.shape for c in crops)
    model = build_model("small_cnn")
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    for tta in ("none", "flip", "tencrop"):
        probs = run_batches(model, images, 48, Normalization(0.5, 0.25), torch.device("cpu"), batch_size=2, tta=tta)
        assert probs.shape == (5, 7) and torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)
    feats = run_batches(model, images, 48, Normalization(0.5, 0.25), torch.device("cpu"), output="features")
    assert feats.shape == (5, 128)
    with pytest.raises(ValueError, match="probabilities only"):
        run_batches(model, images, 48, Normalization(0.5, 0.25), torch.device("cpu"), tta="flip", output="features")


def test_registry_lists_the_issue_models():
    assert {"vgg16", "vgg16_bn", "resnet50", "small_cnn"} <= set(MODELS)
