"""Metal over the knee joint (arthroplasty, plates, screws), found in the crop the model would grade.

Metal stops nearly all X-rays: on any processing it is the brightest thing on the film, flat (no trabecular
texture: the detector sees no signal through it) and with sharp edges where bone or soft tissue meets it.  Bone
is never all three: the densest bone is textured, and where a steep display curve clips it, it fades into the
clip level instead of stepping up to it.  Thin bright strokes (lead letters, burned-in text, ruler ticks) are
removed by a morphological opening wider than they are; an implant's shell, tray, stem, plate or screw survives it.

The crop is display space (0..1, bright = dense) at the model's input size, so the check sees what the model would;
its millimetres are those of a knee of the training crops' size (the crop is framed on the knee, and implants
scale with the knee).
"""

from __future__ import annotations

import cv2
import numpy as np

NEAR_TOP = 0.04  # metal lies within this of the crop's brightest value
MIN_TOP = 0.85  # ... and that value is near white: a crop whose brightest part is grey holds no metal
FLAT = 0.015  # largest local standard deviation (over 1.5 mm) inside metal
STROKE_MM = 2.5  # wider than a lead letter's or a text's stroke, narrower than a screw (4-7 mm)
MIN_AREA_MM2 = 25.0  # smallest metal part that counts (a screw's shank over 10 mm)
STEP = 0.12  # metal stands at least this far above what surrounds it, 1.5 mm outside its edge
INNER = 0.1  # the outer tenth of the crop on each side is ignored: markers and collimation lie there


def metal_over_joint(crop: np.ndarray, mm_per_pixel: float) -> bool:
    """Whether the display-space crop shows metal over the joint (see the module docstring)."""
    top = float(crop.max())
    if top < MIN_TOP:
        return False
    window = max(3, round(1.5 / mm_per_pixel) | 1)
    mean = cv2.blur(crop, (window, window))
    deviation = np.sqrt(np.maximum(cv2.blur(crop * crop, (window, window)) - mean * mean, 0))
    bright = (crop >= top - NEAR_TOP).astype(np.uint8)
    stroke = max(3, round(STROKE_MM / mm_per_pixel) | 1)
    candidate = cv2.morphologyEx(bright & (deviation <= FLAT), cv2.MORPH_OPEN,
                                 cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (stroke, stroke)))
    margin = round(INNER * crop.shape[0]), round(INNER * crop.shape[1])
    inner = np.zeros_like(candidate)
    inner[margin[0]:-margin[0], margin[1]:-margin[1]] = 1
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidate * inner)
    # What surrounds a part: up to 1.5 mm beyond it, outside everything near the top level.
    reach = max(1, round(1.5 / mm_per_pixel))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    outside = cv2.dilate(bright, np.ones((3, 3), np.uint8)) == 0
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] * mm_per_pixel**2 < MIN_AREA_MM2:
            continue
        ring = (cv2.dilate((labels == label).astype(np.uint8), kernel) > 0) & outside
        if ring.any() and top - float(np.median(crop[ring])) >= STEP:
            return True
    return False
