"""Air is never bone or nerve: voxels whose neighbourhood lies below spinect.pipeline.TISSUE_MIN_HU are background
whatever the network says; thin dark streaks (metal) through bone keep the network's label. Thin pieces of tissue
outside the body (a CT table) are background too; limbs are not."""

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


def _ct_with_table(slices: int = 40) -> sitk.Image:
    """1 mm CT: a body (soft tissue with bone inside) and, 6 mm below its back across air, a 3 mm
    curved CT table at 450 HU; a 12 mm thick limb beside the body, apart from it, with bone inside."""
    hu = np.full((slices, 72, 72), -1000.0, np.float32)
    hu[:, 8:50, 10:50] = 40.0  # body
    hu[:, 24:34, 24:36] = 700.0  # bone in the body
    y, x = np.mgrid[0:72, 0:72]
    table = (np.abs(y - (58 + 0.004 * (x - 36) ** 2)) < 1.5) & (x > 2) & (x < 70)
    hu[:, table] = 450.0
    hu[:, 14:26, 56:68] = 40.0  # a limb 12 mm thick, apart from the body
    hu[:, 18:22, 60:64] = 700.0  # its bone
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.0, 1.0, 1.0))
    return img


def test_a_ct_table_outside_the_body_is_never_bone_but_a_limb_is_kept(tiny_model):
    from spinect.pipeline import THIN_OBJECT_MAX_MM, thin_objects_mask

    plan = load_plan(tiny_model)
    for slices in (40, 3):  # a CT of 3 slices is judged in-plane alike
        ct = _ct_with_table(slices)
        labels, record = _segment(plan, ct)
        hu = sitk.GetArrayFromImage(ct)
        table = (hu == 450.0)
        assert table.sum() > 3 * 68 * slices // 2 and not labels[table].any()
        assert (labels[:, 24:34, 24:36] == 1).all() and (labels[:, 18:22, 60:64] == 1).all()  # body and limb bone
        assert (labels[:, 12:46, 14:46] == 1).all()  # the body's soft tissue keeps the network's call
        assert record["thin_object_max_mm"] == THIN_OBJECT_MAX_MM
    # touching the body, the table is part of it and left to the network (and to island removal)
    tissue = sitk.GetArrayFromImage(_ct_with_table()) > TISSUE_MIN_HU
    apart = tissue.copy()
    tissue[:, 49:60, 30:32] = True
    assert not thin_objects_mask(tissue, (1.0, 1.0, 1.0)).any()
    # pieces the network labelled nothing in are not measured (nothing to take away there)
    nothing = np.zeros_like(apart)
    assert thin_objects_mask(apart, (1.0, 1.0, 1.0)).any() and not thin_objects_mask(apart, (1.0, 1.0, 1.0), labelled=nothing).any()


def test_the_phantom_table_is_a_thin_object_and_no_truth_label_is():
    from spinect.phantom import STRUCTURE_CODES, generate_case
    from spinect.pipeline import thin_objects_mask

    case = generate_case(0, shape_zyx=(30, 400, 400), spacing_zyx_mm=(2.0, 1.0, 1.0), window_tables=False)
    ct, labels = sitk.GetArrayFromImage(case.ct), sitk.GetArrayFromImage(case.labels)
    table = sitk.GetArrayFromImage(case.structures) == STRUCTURE_CODES["ct_table"]
    thin = thin_objects_mask(ct > TISSUE_MIN_HU, (2.0, 1.0, 1.0))
    assert table.sum() > 10_000 and (thin & table).sum() > 0.9 * table.sum()  # the rest is its faint partial volume
    assert not labels[thin].any()
    # the table's partial volume, specks of skin and a few voxels of other soft tissue (phantom version 9: a
    # voxel of a bright metal streak in the fat beside a pedicle screw; version 10: a voxel of bowel wall
    # between gas): never a bone, disc, canal or nerve code (below 60)
    other = sitk.GetArrayFromImage(case.structures)[thin & ~table]
    assert other.size < 0.01 * thin.sum()
    assert (~np.isin(other, [STRUCTURE_CODES["air"], STRUCTURE_CODES["skin"]])).sum() <= 3
    assert not np.any((other > 0) & (other < 60))
