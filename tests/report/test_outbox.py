"""The outbox: each result once on disk, linked into the folder of each destination that takes its kind."""

from __future__ import annotations

from pathlib import Path

from node.analysis.grading import Analyzer
from node.config import Destination
from node.domain import Analysis
from node.report import Equipment, build_outputs
from node.report.outbox import Outbox, destination_folder


def test_each_destination_gets_the_objects_it_takes(tmp_path: Path, graded: Analysis, analyzer: Analyzer,
                                                   equipment: Equipment) -> None:
    pacs = Destination("PACS", "10.0.0.5", 104, objects=("sr", "sc"))  # a PACS viewer without SEG support
    ohif = Destination("ORTHANC", "10.0.0.6", 4242)  # default: all three
    outbox = Outbox.of_node(tmp_path, [pacs, ohif])
    sr, sc, seg = build_outputs(graded, analyzer.spec, equipment)
    assert [outbox.takes(output) for output in (sr, sc, seg)] == [[0, 1], [0, 1], [1]]
    for output in (sr, sc, seg):
        paths = outbox.write(output)
        assert [path.parent for path in paths] == [destination_folder(tmp_path, d) for d in (pacs, ohif)
                                                   if {"SR": "sr", "OT": "sc", "SEG": "seg"}[output.Modality]
                                                   in d.objects]
        assert len({path.stat().st_ino for path in paths}) == 1  # one file, linked
    assert sorted(p.name.split("-")[0] for p in destination_folder(tmp_path, pacs).iterdir()) == ["sc", "sr"]
    assert sorted(p.name.split("-")[0] for p in destination_folder(tmp_path, ohif).iterdir()) == ["sc", "seg", "sr"]


def test_without_destinations_all_objects_go_to_the_results_folder(tmp_path: Path, graded: Analysis,
                                                                  analyzer: Analyzer, equipment: Equipment) -> None:
    outbox = Outbox.of_node(tmp_path, [])
    for output in build_outputs(graded, analyzer.spec, equipment):
        (path,) = outbox.write(output)
        assert path.parent == tmp_path / "results"
