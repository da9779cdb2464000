"""How much of a Grad-CAM lies on the knee joint.

The ROI is framed like the training crops, joint line centred, so the joint (joint space, plateau margins where
osteophytes grow) lies in a horizontal band across the middle of the ROI.
"""

from __future__ import annotations

import numpy as np

JOINT_BAND = (0.3, 0.7)  # top and bottom of the band, as fractions of the ROI height


def joint_attention(cams: np.ndarray) -> np.ndarray:
    """Share (0..1) of each CAM's mass (N, h, w) inside the joint band; 0 where a CAM is all zero."""
    low, high = JOINT_BAND
    edges = np.arange(cams.shape[1] + 1) / cams.shape[1]
    in_band = np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0, None) * cams.shape[1]
    rows = cams.sum(2)
    total = rows.sum(1)
    return np.divide((rows * in_band).sum(1), total, out=np.zeros(len(cams)), where=total > 0)
