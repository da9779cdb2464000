from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from node.analysis.model import Grader, ModelSpec, sha256_of
from node.cli import main
from node.training.calibrate import low_confidence_threshold
from node.training.data import load_crops
from node.training.train import TrainOptions, ordinal_targets, train


def test_train_writes_a_loadable_calibrated_model_and_resumes(small_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    options = TrainOptions(data=small_dataset, out=out, epochs=2, batch_size=8, image_size=64, loss="ce")
    spec = train(options)
    assert spec == ModelSpec.read(out / "model.json")
    assert spec.sha256 == sha256_of(out / "model.safetensors")
    assert spec.input_size == 64 and spec.class_names == ("KL0", "KL1", "KL2", "KL3", "KL4")
    # fit_temperature's bounds, e^-3..e^3: two epochs on a handful of crops may leave the fit at one of them.
    assert round(np.exp(-3), 4) <= spec.temperature <= round(np.exp(3), 4)
    assert 0 <= spec.attention_threshold <= 1 and 0 <= spec.confidence_threshold < 1
    assert spec.familiarity_threshold > 0
    log = json.loads((out / "training.json").read_text())
    assert [row["epoch"] for row in log["history"]] == [1, 2]
    assert set(log["calibration"]) >= {"ece_before", "ece_after", "temperature"}

    before = torch.load(out / "train" / "checkpoint.pt", weights_only=False)["model"]
    train(TrainOptions(data=small_dataset, out=out, epochs=3, batch_size=8, image_size=64, loss="ce", resume=True))
    log = json.loads((out / "training.json").read_text())
    assert [row["epoch"] for row in log["history"]] == [1, 2, 3]
    probabilities, cams, _ = Grader(out, device="cpu").predict(load_crops(small_dataset / "val").images[:4])
    assert probabilities.shape == (4, 5) and cams.shape[0] == 4
    after = torch.load(out / "train" / "checkpoint.pt", weights_only=False)
    assert after["epoch"] == 2 and not torch.equal(after["model"]["classifier.weight"], before["classifier.weight"])


def test_calibrate_refits_a_model_folder_in_place(small_dataset: Path, tmp_path: Path) -> None:
    """`knee-node calibrate` on a folder from before familiarity statistics existed: same network weights, new
    statistics and thresholds, and the node loads it."""
    out = tmp_path / "model"
    train(TrainOptions(data=small_dataset, out=out, epochs=1, batch_size=8, image_size=64))
    network = {k: v for k, v in load_file(str(out / "model.safetensors")).items() if not k.startswith("familiarity.")}
    save_file(network, str(out / "model.safetensors"))  # as written before the statistics existed
    spec = json.loads((out / "model.json").read_text())
    del spec["familiarity_threshold"]
    (out / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="missing familiarity_threshold"):
        Grader(out, device="cpu")
    assert main(["calibrate", "--model", str(out), "--data", str(small_dataset), "--device", "cpu"]) == 0
    refitted = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(refitted[k], v) for k, v in network.items())
    grader = Grader(out, device="cpu")
    assert grader.spec.familiarity_threshold > 0
    _, _, distances = grader.predict(load_crops(small_dataset / "val").images)
    assert (distances <= grader.spec.familiarity_threshold).mean() >= 0.9


def test_training_is_reproducible(small_dataset: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        train(TrainOptions(data=small_dataset, out=tmp_path / name, epochs=1, batch_size=8, image_size=64))
    first, second = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("a", "b"))
    # Equal values; the files' bytes may still differ in the sign of a zero (oneDNN kernel choice).
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_ordinal_targets_put_mass_on_neighbouring_grades() -> None:
    targets = ordinal_targets(torch.tensor([0, 2]), 5).numpy()
    np.testing.assert_allclose(targets.sum(1), 1, atol=1e-6)
    assert targets[1].argmax() == 2 and targets[1, 1] == pytest.approx(targets[1, 3])
    assert targets[1, 1] > targets[1, 0] > 0


def test_low_confidence_threshold_flags_where_val_is_mostly_wrong() -> None:
    confident = np.tile([0.9, 0.025, 0.025, 0.025, 0.025], (50, 1))
    unsure = np.tile([0.35, 0.3, 0.15, 0.1, 0.1], (50, 1))
    probabilities = np.vstack([confident, unsure])
    truth = np.array([0] * 50 + [1] * 40 + [0] * 10)  # unsure ones are right 20 % of the time
    threshold = low_confidence_threshold(probabilities, truth)
    assert 0.35 < threshold <= 0.9


def test_progressive_resizing_trains_small_first_and_ships_the_full_size(small_dataset: Path, tmp_path: Path) -> None:
    spec = train(TrainOptions(data=small_dataset, out=tmp_path, epochs=2, batch_size=8, image_size=64,
                              low_res_size=48, low_res_epochs=1))
    history = json.loads((tmp_path / "training.json").read_text())["history"]
    assert [row["size"] for row in history] == [48, 64]
    assert spec.input_size == 64
    with pytest.raises(ValueError, match="low_res_epochs must be 1-1"):
        train(TrainOptions(data=small_dataset, out=tmp_path, epochs=2, image_size=64, low_res_size=48,
                           low_res_epochs=2))
