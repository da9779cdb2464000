"""docs/results.md is the contract: the SR trees it shows are what the node writes, item by item."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom import Dataset

from node.analysis.grading import Analyzer
from node.domain import Analysis
from node.report import Equipment
from node.report.sr import build_sr
from tools import REPO

RESULTS_DOC = REPO / "docs" / "results.md"


def documented_trees() -> list[list[str]]:
    """The ```sr-tree blocks of docs/results.md, as lists of lines."""
    return [block.splitlines() for block in re.findall(r"```sr-tree\n(.*?)```", RESULTS_DOC.read_text(), re.S)]


def tree(items: Sequence[Dataset], depth: int = 0) -> list[str]:
    """Each content item as the docs write it: relationship, value type, concept name; children indented."""
    lines = []
    for item in items:
        (name,) = item.ConceptNameCodeSequence
        relationship = f"{item.RelationshipType} " if "RelationshipType" in item else ""
        lines.append(f'{"  " * depth}{relationship}{item.ValueType} '
                     f'({name.CodeValue}, {name.CodingSchemeDesignator}, "{name.CodeMeaning}")')
        lines += tree(item.get("ContentSequence", []), depth + 1)
    return lines


def read_back(analysis: Analysis, analyzer: Analyzer, equipment: Equipment, tmp_path: Path) -> Dataset:
    path = tmp_path / "sr.dcm"
    build_sr(analysis, analyzer.spec, equipment).save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_the_documented_trees_are_what_the_node_writes(graded: Analysis, not_graded: Analysis, analyzer: Analyzer,
                                                       equipment: Equipment, tmp_path: Path) -> None:
    one_knee, no_knee = documented_trees()
    assert tree([read_back(graded, analyzer, equipment, tmp_path)]) == one_knee
    assert tree([read_back(not_graded, analyzer, equipment, tmp_path)]) == no_knee


def test_every_code_of_the_private_scheme_is_documented(bilateral: Analysis, analyzer: Analyzer,
                                                        equipment: Equipment, tmp_path: Path) -> None:
    sr = read_back(bilateral, analyzer, equipment, tmp_path)
    used = set()

    def collect(items: Sequence[Dataset]) -> None:
        for item in items:
            for code in [*item.get("ConceptNameCodeSequence", []), *item.get("ConceptCodeSequence", [])]:
                if code.CodingSchemeDesignator == "99KNEEKL":
                    used.add((code.CodeValue, code.CodeMeaning))
            collect(item.get("ContentSequence", []))

    collect([sr])
    doc = RESULTS_DOC.read_text()
    for value, meaning in used:
        assert re.search(rf"\b{value}\b", doc) and meaning in doc, (value, meaning)
