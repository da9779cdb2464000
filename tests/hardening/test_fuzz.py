"""Bounded fuzzing of the decoder and of the C-STORE path; bench/fuzz.sh runs the same properties longer."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.analysis.decode import read_radiograph
from node.instances import DecodeError
from node.scu import echo, send
from node.training.data import CropSet
from tests.hardening.corpus import write
from tests.hardening.fuzzing import Edit, apply, edits
from tests.helpers import NodeProcess
from tools.synthetic import compose, encode

ACKNOWLEDGED_OR_REFUSED = {0x0000, 0xA700, 0xA900, 0xC000}


@pytest.fixture(scope="module")
def originals(val_crops: CropSet, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A small uncompressed and a small JPEG 2000 knee: two different parsing and decoding paths."""
    folder = tmp_path_factory.mktemp("fuzz")
    dataset = compose(val_crops, [3], np.random.default_rng(0), spacing_mm=0.6, bits=12).dataset
    return [write(dataset, folder / "raw.dcm").read_bytes(),
            write(encode(dataset, "1.2.840.10008.1.2.4.90"), folder / "j2k.dcm").read_bytes()]


# bench/fuzz.sh raises these bounds for a long run (not KNEE_NODE_*: the node would take them for config).
DECODE_EXAMPLES = int(os.environ.get("FUZZ_DECODE_EXAMPLES", "80"))
STORE_EXAMPLES = int(os.environ.get("FUZZ_STORE_EXAMPLES", "25"))


@settings(max_examples=DECODE_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), changes=edits)
def test_decoding_a_mutated_file_gives_a_radiograph_or_a_reason(originals: list[bytes], which: int,
                                                                 changes: list[Edit]) -> None:
    try:
        radiograph = read_radiograph(io.BytesIO(apply(originals[which], changes)))
    except DecodeError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert radiograph.image.dtype == np.float32 and np.isfinite(radiograph.image).all()


@pytest.fixture(scope="module")
def node(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> NodeProcess:
    running = NodeProcess(tmp_path_factory.mktemp("node"), model_dir, scp={"allow_any_peer": True}).start()
    yield running
    assert running.stop() == 0


@settings(max_examples=STORE_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), changes=edits)
def test_the_scp_answers_mutated_datasets_and_stays_up(originals: list[bytes], node: NodeProcess, tmp_path: Path,
                                                       which: int, changes: list[Edit]) -> None:
    path = tmp_path / "mutated.dcm"
    path.write_bytes(apply(originals[which], changes))
    (result,) = send([path], node.peer(), "FUZZ")
    assert result.status is None or result.status in ACKNOWLEDGED_OR_REFUSED, result
    assert echo(node.peer(), "ECHO") == 0
