from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from node.cli import main
from node.config import DEFAULT_MODEL_DIR
from node.training.evaluate import average_ranks, spearman
from node.training.train import TrainOptions, train
from tools import KNEE_KL


@pytest.fixture(scope="module")
def trained(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train(TrainOptions(data=small_dataset, out=out, epochs=1, batch_size=8, image_size=64))
    return out


def test_evaluate_prints_figures_and_ends_with_one_json_line(
        trained: Path, small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery = tmp_path / "gallery"
    assert main(["evaluate", "--data", str(small_dataset / "val"), "--model", str(trained), "--json", "--plots",
                 str(tmp_path), "--cam-sanity", "--gallery", str(gallery), "--compare-fp32", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert {"accuracy", "qwk", "mae", "macro_f1", "ece"} <= figures.keys()
    assert figures["n"] == 20 and np.array(figures["confusion"]).sum() == 20
    assert -1 <= figures["cam_randomization_rank_correlation"] <= 1
    assert (tmp_path / "confusion.png").stat().st_size > 0 and (tmp_path / "reliability.png").stat().st_size > 0
    assert any(line.strip().startswith("qwk") for line in lines)
    assert 0 <= figures["fp32_same_grade"] <= 1 and 0 <= figures["brier"] <= 2
    errors = round((1 - figures["accuracy"]) * 20)
    summary = json.loads((gallery / "summary.json").read_text())
    assert summary == figures["gallery"] and summary["errors"] == errors
    assert sum(summary["errors_by_distance"].values()) == errors
    page = (gallery / "index.html").read_text()
    assert page.count("<figure>") == errors == len(list((gallery / "images").glob("*.png")))


def test_average_ranks_share_ties() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([0.0, 0.0, 3.0, 1.0])), [0.5, 0.5, 3.0, 2.0])
    assert spearman(np.array([0, 0, 1, 2, 3.0]), np.array([0, 0, 2, 4, 9.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3.0]), np.array([3, 2, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.zeros(4), np.arange(4.0)))


@pytest.mark.slow
def test_evaluate_on_val_reproduces_the_model_cards_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The card quotes evaluation.json, written by `knee-node evaluate --data .../val --json --cam-sanity`."""
    assert main(["evaluate", "--data", str(KNEE_KL / "val"), "--json", "--cam-sanity", "--device", "cpu"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recorded = json.loads((DEFAULT_MODEL_DIR / "evaluation.json").read_text())
    for key in ("accuracy", "qwk", "mae", "macro_f1", "ece", "ece_uncalibrated", "adaptive_ece", "brier",
                "joint_attention_median", "attention_flagged", "low_confidence_flagged",
                "cam_randomization_rank_correlation"):
        assert figures[key] == pytest.approx(recorded[key], abs=1e-4), key
    assert figures["confusion"] == recorded["confusion"]
