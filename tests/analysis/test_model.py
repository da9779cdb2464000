from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image

from node.analysis.model import (
    SPEC_FILE,
    WEIGHTS_FILE,
    Grader,
    KneeGrader,
    ModelSpec,
    autocast_dtype,
    softmax,
    standardize,
)
from node.config import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def grader_inputs() -> tuple[KneeGrader, torch.Tensor]:
    torch.manual_seed(1)
    module = KneeGrader().eval()
    # Random weights give near-uniform logits; sharpen the head so the top class is unambiguous.
    with torch.no_grad():
        module.classifier.weight.mul_(20)
    images = torch.rand(4, 1, 128, 128)
    images[1] = images[1].flip(-1) ** 2
    return module, standardize(images)


def autograd_cam(module: KneeGrader, inputs: torch.Tensor) -> torch.Tensor:
    """Textbook Grad-CAM: gradients of the top score by backpropagation."""
    feature_map = module.features(inputs)
    logits = module.classifier(F.relu(feature_map).mean((2, 3)))
    top = logits.argmax(1)
    (gradient,) = torch.autograd.grad(logits[torch.arange(len(top)), top].sum(), feature_map)
    alpha = gradient.mean((2, 3))
    return F.relu((alpha[:, :, None, None] * feature_map).sum(1)).detach()


def test_closed_form_cam_equals_autograd(grader_inputs: tuple[KneeGrader, torch.Tensor]) -> None:
    module, inputs = grader_inputs
    with torch.no_grad():
        _, cam, _ = module.forward_with_cam(inputs)
    expected = autograd_cam(module, inputs)
    assert cam.shape == expected.shape == (4, 4, 4)
    assert expected.amax((1, 2)).min() > 0  # a non-trivial map for every image
    scale = expected.amax((1, 2), keepdim=True)
    assert torch.allclose(cam / scale, expected / scale, atol=1e-4)


def test_closed_form_cam_equals_grad_cam_package(grader_inputs: tuple[KneeGrader, torch.Tensor]) -> None:
    module, inputs = grader_inputs
    with torch.no_grad():
        _, cam, _ = module.forward_with_cam(inputs)
    with GradCAM(model=module, target_layers=[module.features]) as package:
        theirs = package(input_tensor=inputs, targets=None)  # None: each image's top class
    # The package returns its map min-max scaled and resized to the input; give ours the same treatment.
    ours = scale_cam_image(scale_cam_image(cam.numpy(), (128, 128)))
    assert theirs.shape == ours.shape == (4, 128, 128)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_forward_and_forward_with_cam_agree(grader_inputs: tuple[KneeGrader, torch.Tensor]) -> None:
    module, inputs = grader_inputs
    with torch.no_grad():
        logits, _, _ = module.forward_with_cam(inputs)
        assert torch.allclose(logits, module(inputs), atol=1e-5)


def test_grader_loads_saved_model_and_batches(model_dir: Path) -> None:
    grader = Grader(model_dir, device="cpu")
    crops = np.random.default_rng(0).random((3, 300, 300), dtype=np.float32)
    probabilities, cams, _ = grader.predict(crops)
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert cams.shape == (3, 7, 7) and (cams >= 0).all()
    one, _, _ = grader.predict(crops[1:2])
    # Batch composition does not matter, up to bf16 rounding where the CPU runs bf16 (oneDNN blocks by batch).
    tolerance = 1e-3 if autocast_dtype(grader.device) else 1e-5
    np.testing.assert_allclose(one[0], probabilities[1], atol=tolerance)


def test_grader_applies_temperature(model_dir: Path, tmp_path: Path) -> None:
    for name in (WEIGHTS_FILE, SPEC_FILE):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    (tmp_path / SPEC_FILE).write_text(json.dumps({**spec, "temperature": 3.0}))
    crops = np.random.default_rng(1).random((2, 224, 224), dtype=np.float32)
    hot, _, _ = Grader(tmp_path, device="cpu").predict(crops)
    cold, _, _ = Grader(model_dir, device="cpu").predict(crops)
    logits = np.log(cold)
    np.testing.assert_allclose(hot, softmax(logits, 3.0), atol=1e-5)


def test_weights_that_do_not_match_their_checksum_are_refused(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / SPEC_FILE).write_bytes((model_dir / SPEC_FILE).read_bytes())
    weights = bytearray((model_dir / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 1
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(ValueError, match="sha256"):
        Grader(tmp_path, device="cpu")


def test_spec_names_missing_fields(tmp_path: Path) -> None:
    (tmp_path / SPEC_FILE).write_text(json.dumps({"name": "x", "version": "1"}))
    with pytest.raises(ValueError, match="missing input_size"):
        ModelSpec.read(tmp_path / SPEC_FILE)


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.json not found"):
        Grader(tmp_path / "nowhere", device="cpu")


def test_the_bundled_model_is_compact_checksummed_and_calibrated() -> None:
    assert (DEFAULT_MODEL_DIR / WEIGHTS_FILE).stat().st_size < 20 * 2**20
    spec = Grader(DEFAULT_MODEL_DIR, device="cpu").spec  # loading checks the weights against model.json's sha256
    assert spec.temperature > 0 and spec.temperature != 1.0
    assert 0 < spec.confidence_threshold < 1 and 0 < spec.attention_threshold < 1
    assert "not for primary diagnosis" in (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()


def test_the_network_is_torchvisions_densenet121_with_one_input_channel(
        grader_inputs: tuple[KneeGrader, torch.Tensor]) -> None:
    """The node builds DenseNet-121 itself (importing torchvision costs serve 164 MB): the same modules, names and
    outputs as torchvision's, so weights move between the two as they are."""
    torchvision = pytest.importorskip("torchvision")
    module, images = grader_inputs
    reference = torchvision.models.densenet121(num_classes=5)
    reference.features.conv0 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    reference.load_state_dict(module.state_dict())  # strict: every name and shape the same
    with torch.no_grad():
        torch.testing.assert_close(module(images), reference.eval()(images))
