"""Log lines name patients only by a keyed pseudonym; the key is made once per data folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydicom import Dataset

from node.infra.logs import instance_fields, pseudonym, pseudonym_key


def test_the_key_is_made_once_and_the_pseudonym_depends_on_it(tmp_path: Path) -> None:
    key = pseudonym_key(tmp_path)
    assert pseudonym_key(tmp_path) == key and len(key) == 32
    assert pseudonym("12345", key) == pseudonym("12345", key) != pseudonym("12346", key)
    (tmp_path / "other").mkdir()
    assert pseudonym("12345", key) != pseudonym("12345", pseudonym_key(tmp_path / "other"))
    assert pseudonym("12345", key) not in hashlib.sha256(b"12345").hexdigest()  # not a plain hash


def test_instance_fields_carry_no_patient_identifier(tmp_path: Path) -> None:
    header = Dataset()
    header.SOPInstanceUID, header.Modality = "1.2.3", "DX"
    header.PatientID, header.PatientName, header.PatientBirthDate = "MRN-0042", "DOE^JANE", "19500101"
    fields = instance_fields(header, pseudonym_key(tmp_path))
    assert set(fields) == {"sop_instance_uid", "modality", "patient"}
    assert not {"MRN-0042", "DOE^JANE", "19500101"} & set(fields.values())
