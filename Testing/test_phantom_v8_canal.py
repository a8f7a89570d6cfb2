"""Phantom version 8 look (image only): the dural sac's CSF rises in the bony canal and half the
cases have thin epidural fat, so the sac is not always a dark-ringed tube. Labels, structure
codes and truth stay those of the frozen hashes (test_phantom_ct_look.py)."""

import numpy as np
import SimpleITK as sitk

from spinect.phantom import STRUCTURE_CODES as C
from spinect.phantom import appearance as A
from spinect.phantom.case import generate_case


def test_canal_values_stay_in_their_ranges_and_thin_fat_comes_in_half_the_cases():
    draws = [A.sample_canal_look(np.random.default_rng(i), {"csf": 12.0}) for i in range(400)]
    sac = np.array([d["dural_sac"] for d in draws])
    assert sac.min() >= 12.0 + A.CANAL_CSF_RISE_HU[0] and sac.max() <= 12.0 + A.CANAL_CSF_RISE_HU[1]
    thin = np.array([d["epidural_fat"] for d in draws if "epidural_fat" in d])
    assert 0.4 < len(thin) / len(draws) < 0.6
    assert thin.min() >= A.THIN_EPIDURAL_FAT_HU[0] and thin.max() <= A.THIN_EPIDURAL_FAT_HU[1]


def test_the_tissue_table_takes_the_canal_values_and_leaves_the_foramina_fat():
    for seed in range(12):
        app = A.sample_ct(np.random.default_rng(seed), (1.0, 1.0, 1.0))
        table = A.ct_values(app).table
        assert table[C["dural_sac"]] == np.float32(app.tissue_hu["dural_sac"]) >= np.float32(app.tissue_hu["csf"])
        assert table[C["epidural_fat"]] == np.float32(app.tissue_hu.get("epidural_fat", app.tissue_hu["fat"]))
        assert table[C["foraminal_fat"]] == np.float32(app.tissue_hu["fat"])


def test_the_sac_reads_its_drawn_value_in_the_image():
    from scipy import ndimage

    for seed in range(4):
        case = generate_case(seed, shape_zyx=(40, 64, 64), noise=False, window_tables=False)
        look = case.truth["appearance"]["ct"]
        sac = ndimage.binary_erosion(sitk.GetArrayFromImage(case.structures) == C["dural_sac"], iterations=2)
        if sac.sum() > 20:  # the core of the sac, away from partial volume with the fat
            median = float(np.median(sitk.GetArrayFromImage(case.ct)[sac]))
            # noise=False renders without the scanner stage, so without the calibration offset
            assert abs(median - look["tissue_hu"]["dural_sac"]) < 15.0, (seed, median)
