"""Air is never bone or nerve: voxels whose neighbourhood lies below spinect.pipeline.TISSUE_MIN_HU are background
whatever the network says; thin dark streaks (metal) through bone keep the network's label."""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi
from torch import nn

from spinect.model_file import load_plan
from spinect.pipeline import AIR_NEIGHBOURHOOD_MM, TISSUE_MIN_HU, InferenceSettings, network_input, segment_network_input


class _AlwaysBone(nn.Module):
    """Calls every voxel bone (class 1), as a network fooled by the lung's texture might."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros((x.shape[0], 3, *x.shape[2:]), dtype=x.dtype, device=x.device)
        logits[:, 1] = 10.0
        return logits


def _ct() -> sitk.Image:
    """1 mm LPS CT (z, y, x = 40, 64, 64): air, a lung at -850 HU, a rib's partial volume against it
    (-250 HU), soft tissue, and bone crossed by a 2 mm metal streak at -900 HU."""
    hu = np.full((40, 64, 64), -1000.0, np.float32)
    hu[:, 8:56, 8:56] = 40.0
    hu[:, 16:40, 12:30] = -850.0  # a lung
    hu[:, 16:40, 30:32] = -250.0  # a rib's partial volume against it: tissue
    hu[:, 20:34, 38:52] = 700.0  # bone
    hu[:, 26:28, 36:54] = -900.0  # a photon-starvation streak through it
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.0, 1.0, 1.0))
    return img


def _segment(plan, ct):
    settings = InferenceSettings.from_plan(plan, smoothing_mm=0.0, skip_air=False, remove_islands=False)
    out = segment_network_input(network_input(ct, plan), _AlwaysBone(), plan, settings, device="cpu")
    return sitk.GetArrayFromImage(out.labels), settings.record(plan, device="cpu")


def test_air_and_lung_are_never_labelled_bone(tiny_model):
    plan = load_plan(tiny_model)
    assert plan.hu_window[0] < TISSUE_MIN_HU and AIR_NEIGHBOURHOOD_MM == 2.0
    ct = _ct()
    labels, record = _segment(plan, ct)
    hu = sitk.GetArrayFromImage(ct)
    assert labels.shape == hu.shape
    # every voxel whose 5 x 5 x 5 mm box is below the limit (the image edge counts as air): background
    deep_air = ndi.binary_erosion(hu < TISSUE_MIN_HU, structure=np.ones((5, 5, 5), bool), border_value=1)
    assert deep_air[:, 24, 20].all() and not labels[deep_air].any()  # inside the lung and outside the body
    assert (labels[~deep_air] == 1).all()  # the rest keeps the network's call
    assert (labels[hu >= TISSUE_MIN_HU] == 1).all()  # tissue, the rib's partial volume included
    assert (labels[:, 26:28, 38:52] == 1).all()  # the streak through bone stays bone
    assert (labels[:, 18:38, 14:28] == 0).all()  # the lung more than 2 mm from tissue: background
    assert record["tissue_min_hu"] == TISSUE_MIN_HU and record["air_neighbourhood_mm"] == AIR_NEIGHBOURHOOD_MM


def test_a_model_whose_window_clips_air_away_is_left_alone(tiny_model):
    plan = dataclasses.replace(load_plan(tiny_model), hu_window=(-200.0, 2000.0))
    labels, record = _segment(plan, _ct())
    assert (labels == 1).all() and record["tissue_min_hu"] is None
