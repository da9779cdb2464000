"""The audit gallery: every misclassified crop beside its Grad-CAM overlay, on one HTML page (no server needed).

Grouped by confusion cell (true -> predicted), the cells most off first; each crop with its calibrated
probabilities, the share of attention on the joint and the flags the node would raise.  `summary.json` counts the
errors by how far off they are and by flag.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from node.analysis.model import ModelSpec
from node.report.sc import blend_heatmap
from node.training.data import CropSet


def overlay(crop: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The crop (uint8 gray) with its normalised Grad-CAM blended in, RGB."""
    heat = cv2.resize(cam / max(float(cam.max()), 1e-12), crop.shape[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 1)
    rgb = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB)
    blend_heatmap(rgb, heat)
    return rgb


def write_gallery(folder: Path, crops: CropSet, probabilities: np.ndarray, cams: np.ndarray, attention: np.ndarray,
                  spec: ModelSpec) -> dict[str, Any]:
    """Write folder/index.html (+ images/, summary.json); returns the summary."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    predicted = probabilities.argmax(1)
    confidence = probabilities.max(1)
    wrong = np.flatnonzero(predicted != crops.grades)
    off_joint = attention < spec.attention_threshold
    unsure = confidence < spec.confidence_threshold
    # Most off first, then cell by cell, the most confident mistakes first within a cell.
    order = sorted(wrong, key=lambda i: (-abs(int(predicted[i]) - int(crops.grades[i])), int(crops.grades[i]),
                                         int(predicted[i]), -float(confidence[i])))
    sections: dict[tuple[int, int], list[str]] = {}
    for i in order:
        name = f"{i:04d}.png"
        side_by_side = np.hstack([cv2.cvtColor(crops.images[i], cv2.COLOR_GRAY2RGB), overlay(crops.images[i], cams[i])])
        cv2.imwrite(str(folder / "images" / name), cv2.cvtColor(side_by_side, cv2.COLOR_RGB2BGR))
        flags = [label for label, on in (("attention outside joint", off_joint[i]), ("low confidence", unsure[i]))
                 if on]
        bars = " ".join(f"KL{k} {100 * p:.0f}%" for k, p in enumerate(probabilities[i]))
        sections.setdefault((int(crops.grades[i]), int(predicted[i])), []).append(
            f'<figure><img src="images/{name}" alt="{html.escape(crops.files[i])}"><figcaption>'
            f"<b>{html.escape(crops.files[i])}</b><br>{bars}<br>joint attention {100 * attention[i]:.0f}%"
            f"{'<br><em>' + ', '.join(flags) + '</em>' if flags else ''}</figcaption></figure>")
    summary = {
        "crops": len(crops.grades),
        "errors": len(wrong),
        "errors_by_distance": {str(d): int((np.abs(predicted[wrong] - crops.grades[wrong]) == d).sum())
                               for d in range(1, probabilities.shape[1])},
        "errors_attention_outside_joint": int(off_joint[wrong].sum()),
        "errors_low_confidence": int(unsure[wrong].sum()),
        "errors_unflagged": int((~off_joint[wrong] & ~unsure[wrong]).sum()),
        "correct_attention_outside_joint": int(off_joint[predicted == crops.grades].sum()),
    }
    body = "".join(f'<h2>true KL{t} &rarr; predicted KL{p}: {len(items)}</h2><div class="cell">{"".join(items)}</div>'
                   for (t, p), items in sections.items())
    distances = ", ".join(f"{n} off by {d}" for d, n in summary["errors_by_distance"].items())
    (folder / "index.html").write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(spec.name)} {html.escape(spec.version)}: errors</title>
<style>body{{font-family:sans-serif;margin:1em}} .cell{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;width:448px;font-size:12px}} img{{width:448px}}</style></head><body>
<h1>{html.escape(spec.name)} {html.escape(spec.version)}: {len(wrong)} of {len(crops.grades)} crops misgraded</h1>
<p>{distances}.  Flagged among the errors: {summary["errors_attention_outside_joint"]} attention outside the joint,
{summary["errors_low_confidence"]} low confidence; {summary["errors_unflagged"]} not flagged.  Each crop: as
stored (left), Grad-CAM of the predicted grade (right).  AI result, not for primary diagnosis.</p>
{body}</body></html>
""")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
