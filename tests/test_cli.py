"""`knee-node analyze` end to end: files in, SC + SR out, one JSON line per input, exit codes, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from node.cli import main
from tests.helpers import dciodvfy_errors
from tools import KNEE_KL
from tools.synthetic import SYNTAXES, minimal_header, write_composites

RG1 = Path(get_testdata_file("RG1_UNCI.dcm", download=False))


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    code = main(["analyze", *args, "--json"])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


@pytest.fixture(scope="module")
def knees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 single-knee radiographs cycling through every transfer syntax the node supports."""
    if not (KNEE_KL / "val").is_dir():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    folder = tmp_path_factory.mktemp("knees")
    write_composites(KNEE_KL / "val", folder, 20, bilateral_fraction=0.0, syntaxes=SYNTAXES, seed=3,
                     spacing_mm=0.3)
    (folder / "truth.json").unlink()
    return folder


def test_twenty_knees_in_mixed_syntaxes_are_all_graded(knees: Path, model_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, results, errors = run_json(capsys, str(knees), "--out", str(tmp_path), "--model", str(model_dir))
    assert code == 0 and errors == ""
    assert len(results) == 20
    assert {pydicom.dcmread(knees / r["file"].split("/")[-1], stop_before_pixels=True).file_meta.TransferSyntaxUID
            for r in results} == set(SYNTAXES)
    for result in results:
        assert result["status"] == "ok", result
        (knee,) = result["knees"]
        assert set(knee) >= {"laterality", "grade", "confidence", "probabilities", "attention", "reliability"}
        assert 0 <= knee["grade"] <= 4 and len(knee["probabilities"]) == 5
        assert [Path(p).name.split("-")[0] for p in result["outputs"]] == ["sr", "sc", "seg"]
    assert len(list(tmp_path.glob("*.dcm"))) == 60
    assert dciodvfy_errors(Path(results[0]["outputs"][0])) == []


def test_a_radiograph_with_only_type_1_attributes_gets_valid_results(knees: Path, model_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """As anonymisers leave them: no patient name, ID, birth date, sex, study date, accession number, ..."""
    source = tmp_path / "minimal.dcm"
    minimal_header(pydicom.dcmread(knees / "0001.dcm")).save_as(source, enforce_file_format=True)
    code, (result,), errors = run_json(capsys, str(source), "--out", str(tmp_path / "out"), "--model", str(model_dir))
    assert code == 0 and errors == "" and result["status"] == "ok", result
    for output in result["outputs"]:
        assert dciodvfy_errors(Path(output)) == [], output
        assert pydicom.dcmread(output).PatientBirthDate == ""


def test_a_chest_radiograph_is_skipped_with_a_reason(model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, (result,), _ = run_json(capsys, str(RG1), "--out", str(tmp_path), "--model", str(model_dir))
    assert code == 0
    assert result["status"] == "skipped"
    assert result["reason"] == "not a knee examination (body part CHEST)"
    assert result["knees"] == [] and result["outputs"] == []
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line_on_stderr_and_exit_1(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "in" / "broken.dcm"
    broken.parent.mkdir()
    broken.write_bytes(RG1.read_bytes()[:4000])  # truncated inside the pixel data
    shutil.copy(RG1, tmp_path / "in" / "chest.dcm")
    (tmp_path / "in" / "notes.txt").write_text("a folder's notes are not an input\n")
    done = subprocess.run([sys.executable, "-m", "node.cli", "analyze", str(tmp_path / "in"), "--out",
                           str(tmp_path / "out"), "--model", str(model_dir), "--force"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{broken}: ")
    assert f"{tmp_path / 'in' / 'chest.dcm'}:" in done.stdout  # --force: analysed, whatever the body part
    assert "notes.txt" not in done.stdout + done.stderr


def test_usage_errors_exit_2(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "missing.dcm"), "--out", str(tmp_path)]) == 2
    assert "missing.dcm: no such file or directory" in capsys.readouterr().err
    assert main(["analyze", str(RG1), "--out", str(tmp_path), "--model", str(tmp_path / "nowhere")]) == 2
    assert "model.json not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", str(RG1)])  # --out missing
    assert exit_info.value.code == 2
