"""The overlay PNG shows the labels where they are, in their colours."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import SimpleITK as sitk

from spinect.visualize import save_overlay_png


def test_overlay_png_draws_nerve_and_bone(tmp_path):
    ct = np.full((20, 40, 40), -1000, np.int16)
    labels = np.zeros(ct.shape, np.uint8)
    labels[5:15, 10:30, 10:20] = 1
    labels[5:15, 10:30, 22:30] = 2
    ct[labels == 1] = 1200
    ct[labels == 2] = 20
    ct_img, lab_img = sitk.GetImageFromArray(ct), sitk.GetImageFromArray(labels)
    path = save_overlay_png(ct_img, lab_img, tmp_path / "o.png", truth=lab_img, title="t")
    rgb = mpimg.imread(path)[..., :3]
    # Nerve over soft tissue at alpha 0.85: strongly yellow (red and green high, blue low).
    yellow = (rgb[..., 0] > 0.7) & (rgb[..., 1] > 0.6) & (rgb[..., 2] < 0.3)
    assert yellow.sum() > 3000  # several views of a 10 x 20 x 8-voxel nerve block, not just the legend
    assert not list(tmp_path.glob("*.tmp*"))
