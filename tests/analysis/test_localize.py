"""Finding knee joints: position, side and count on composite radiographs; views and images that are not graded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from node.analysis.decode import decode, read_radiograph
from node.analysis.grading import Analyzer
from node.analysis.localize import Localizer, view_not_graded
from node.analysis.model import Grader
from node.config import DEFAULT_MODEL_DIR
from node.domain import KneeRoi, Laterality, Radiograph
from node.training.data import KNEE_KL_FIELD_MM, CropSet
from tools.synthetic import Composite, bilateral_pairs, compose


@pytest.fixture(scope="module")
def localizer() -> Localizer:
    return Localizer(KNEE_KL_FIELD_MM)


def composites(crops: CropSet, count: int, bilateral: bool, seed: int, **options: object) -> list[Composite]:
    rng = np.random.default_rng(seed)
    pairs = bilateral_pairs(crops)
    chosen = [pairs[int(rng.integers(len(pairs)))] if bilateral else (int(rng.integers(len(crops.files))),)
              for _ in range(count)]
    return [compose(crops, indices, rng, spacing_mm=float(rng.uniform(0.12, 0.2)), **options) for indices in chosen]


def center_errors_mm(localizer: Localizer, composite: Composite) -> list[float]:
    radiograph = decode(composite.dataset)
    rois, reason = localizer.find_knees(radiograph)
    assert reason == ""
    return roi_errors_mm(rois, radiograph, composite)


def roi_errors_mm(rois: Sequence[KneeRoi], radiograph: Radiograph, composite: Composite) -> list[float]:
    """Each knee's ROI centre distance from the truth, the knees matched left to right; sides must agree."""
    assert len(rois) == len(composite.knees)
    errors = []
    for roi, truth in zip(sorted(rois, key=lambda r: r.center[1]), sorted(composite.knees, key=lambda k: k.center[1]),
                          strict=True):
        assert roi.laterality is truth.laterality
        row_mm, col_mm = radiograph.spacing_mm or (np.nan, np.nan)
        errors.append(float(np.hypot((roi.center[0] - truth.center[0]) * row_mm,
                                     (roi.center[1] - truth.center[1]) * col_mm)))
        # Framed on the knee's matched size: the size steps are 6 %, and a blurry mean knee matches loosely.
        assert roi.half_size[0] * row_mm == pytest.approx(KNEE_KL_FIELD_MM * truth.size_factor / 2, rel=0.2)
    return errors


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_the_roi_is_framed_on_the_knee_found(localizer: Localizer, val_crops: CropSet, factor: float) -> None:
    """A knee 20 % smaller or 25 % larger than the training crops' (patient size, magnification) is cropped as they
    are: the ROI follows its size, not a fixed physical field."""
    framed = []
    for composite in composites(val_crops, 8, False, seed=23, size_factors=(factor,)):
        radiograph = decode(composite.dataset)
        rois, _ = localizer.find_knees(radiograph)
        assert len(rois) == 1
        framed.append(2 * rois[0].half_size[0] * radiograph.spacing_mm[0] / (KNEE_KL_FIELD_MM * factor))
    assert np.median(framed) == pytest.approx(1, abs=0.05)


@pytest.mark.parametrize("bilateral", [False, True], ids=["single", "bilateral"])
def test_every_knee_found_near_truth_with_its_side(localizer: Localizer, val_crops: CropSet, bilateral: bool) -> None:
    errors = [e for c in composites(val_crops, 12, bilateral, seed=21) for e in center_errors_mm(localizer, c)]
    assert len(errors) == (24 if bilateral else 12)
    assert max(errors) < 10


def test_laterality_without_header_comes_from_the_image(localizer: Localizer, val_crops: CropSet) -> None:
    for composite in composites(val_crops, 6, bilateral=False, seed=5):
        del composite.dataset.ImageLaterality
        (roi,), _ = localizer.find_knees(decode(composite.dataset))
        assert roi.laterality is composite.knees[0].laterality  # matched as a right or as a left knee


def test_a_mirrored_bilateral_image_says_so_in_patient_orientation(localizer: Localizer, val_crops: CropSet) -> None:
    (composite,) = composites(val_crops, 1, bilateral=True, seed=8)
    radiograph = decode(composite.dataset)
    mirrored = type(radiograph)(radiograph.header, np.ascontiguousarray(radiograph.image[:, ::-1]),
                                radiograph.spacing_mm)
    mirrored.header.PatientOrientation = ["R", "F"]
    rois, _ = localizer.find_knees(mirrored)
    # Now the patient's left knee is on the image left.
    assert [roi.laterality for roi in sorted(rois, key=lambda r: r.center[1])] == [Laterality.LEFT, Laterality.RIGHT]


def test_missing_spacing_is_estimated_from_the_knee(localizer: Localizer, val_crops: CropSet) -> None:
    for composite in composites(val_crops, 4, bilateral=False, seed=3, spacing_tag="none"):
        radiograph = decode(composite.dataset)
        assert radiograph.spacing_mm is None
        (roi,), _ = localizer.find_knees(radiograph)
        truth = composite.knees[0]
        assert np.hypot(roi.center[0] - truth.center[0], roi.center[1] - truth.center[1]) < 0.25 * roi.half_size[0]


@pytest.mark.parametrize(("attributes", "reason"), [
    ({"ViewPosition": "LL"}, "LL view is not graded"),
    ({"ViewPosition": "", "SeriesDescription": "Knee skyline 30 deg"}, "skyline view is not graded"),
    ({"ViewPosition": "AP", "ProtocolName": "KNEE LAT"}, "lat view is not graded"),
    ({"ViewPosition": "PA", "SeriesDescription": "Knees bilateral PA"}, ""),
])
def test_views_that_are_not_graded(attributes: dict[str, str], reason: str) -> None:
    header = Dataset()
    for keyword, value in attributes.items():
        setattr(header, keyword, value)
    assert view_not_graded(header).startswith(reason) if reason else view_not_graded(header) == ""


def test_a_lateral_composite_gets_no_roi(localizer: Localizer, val_crops: CropSet) -> None:
    (composite,) = composites(val_crops, 1, bilateral=False, seed=2, view="LL")
    assert localizer.find_knees(decode(composite.dataset)) == ([], "LL view is not graded (only AP/PA knee "
                                                                    "radiographs are)")


def test_an_ankle_radiograph_has_no_knee_joint(localizer: Localizer) -> None:
    """WG04 RG3: distal tibia and ankle, no spacing; the ankle joint must not pass for a knee."""
    rois, reason = localizer.find_knees(read_radiograph(get_testdata_file("RG3_UNCR.dcm", download=False)))
    assert rois == [] and reason.startswith("no knee joint found")


@pytest.mark.slow
def test_on_150_composites_every_knee_is_found_and_graded_as_its_crop(localizer: Localizer,
                                                                       val_crops: CropSet) -> None:
    """The localization acceptance: 100 single-knee and 50 bilateral composites of val crops, the bundled model.

    Every knee within 10 mm and on its side; the pipeline's grades (decode, find, crop by physical size) as
    accurate as the model on the same crops given directly, within 2 points.
    """
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.skip(f"no bundled model at {DEFAULT_MODEL_DIR}")
    analyzer = Analyzer(Grader(DEFAULT_MODEL_DIR))
    composites_ = composites(val_crops, 100, False, seed=100) + composites(val_crops, 50, True, seed=150)
    analyses = [analyzer.analyze([decode(c.dataset)])[0] for c in composites_]
    errors = [e for c, a in zip(composites_, analyses, strict=True)
              for e in roi_errors_mm([k.roi for k in a.knees], a.radiograph, c)]
    truths = [knee for c in composites_ for knee in sorted(c.knees, key=lambda k: k.center[1])]
    graded = [knee for a in analyses for knee in sorted(a.knees, key=lambda k: k.roi.center[1])]
    direct, _, _ = analyzer.grader.predict(val_crops.images[[val_crops.files.index(t.file) for t in truths]])
    grades = np.array([t.grade for t in truths])
    pipeline_accuracy = float(np.mean([k.grade for k in graded] == grades))
    crop_accuracy = float(np.mean(direct.argmax(1) == grades))
    print(f"150 composites, {len(truths)} knees: ROI centre error median {np.median(errors):.1f} mm, max "
          f"{max(errors):.1f} mm; accuracy {pipeline_accuracy:.3f} through the pipeline, {crop_accuracy:.3f} on the "
          f"same crops directly")
    assert len(errors) == len(graded) == 200
    assert max(errors) < 10, [(t.file, round(e, 1)) for t, e in zip(truths, errors, strict=True) if e >= 10]
    assert all(k.roi.laterality is t.laterality for k, t in zip(graded, truths, strict=True))
    assert abs(pipeline_accuracy - crop_accuracy) <= 0.02


@pytest.mark.parametrize("full_length", [False, True], ids=["bilateral", "full-length"])
def test_both_knees_found_when_their_sizes_differ(localizer: Localizer, val_crops: CropSet, full_length: bool) -> None:
    """Bilateral films, also hip-to-ankle ones (0.2 mm pixels, text and a ruler burned in), with knees whose
    apparent sizes differ by up to 25 %."""
    rng = np.random.default_rng(41)
    pairs = bilateral_pairs(val_crops)
    for factors in ((0.85, 1.06), (1.2, 0.96), (1.0, 1.25)):
        indices = pairs[int(rng.integers(len(pairs)))]
        composite = compose(val_crops, indices, rng, spacing_mm=0.2, size_factors=factors, full_length=full_length,
                            burned_in=full_length)
        assert max(center_errors_mm(localizer, composite)) < 10
