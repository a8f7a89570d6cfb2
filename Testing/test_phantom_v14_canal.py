"""Phantom version 14 (image only): the anterior epidural space reads as ligament and venous plexus, not fat.

Before, the epidural fat filled the canal round the dural sac and drew a dark ring round it, in front too, where
the lumbar sac lies against the posterior longitudinal ligament and the anterior internal venous plexus (blinded
readers: a round canal in a dark rim). Labels and codes are those of the frozen hashes (test_phantom_ct_look.py).
"""

import numpy as np
import SimpleITK as sitk

from spinect.phantom import STRUCTURE_CODES as C
from spinect.phantom.case import generate_case
from spinect.phantom.render import anterior_epidural_weight, ligamentum_flavum_weight


_arr = sitk.GetArrayFromImage


def test_anterior_epidural_space_is_soft_tissue_in_front_of_the_sac_only(clean_canal_case):
    clean_case = clean_canal_case
    st, labels, ct = _arr(clean_case.structures), _arr(clean_case.labels), _arr(clean_case.ct).astype(float)
    slices, weight = anterior_epidural_weight(st, clean_case.grid.body_box(), clean_case.anatomy)
    w = np.zeros(st.shape, np.float32)
    w[slices] = weight
    core = w >= 0.99
    assert core.sum() > 20
    assert np.all(st[w > 0] == C["epidural_fat"])  # image only: the code stays epidural fat
    assert np.all(labels[w > 0] == 0)  # never bone or nerve
    # in front of the sac (anterior is -y in the unrotated body; the grid is LPS) and within its width
    sac = st == C["dural_sac"]
    for z in np.unique(np.nonzero(core)[0]):
        ys, xs = np.nonzero(core[z])
        sac_y, sac_x = np.nonzero(sac[z])
        assert ys.max() < sac_y.mean()
        assert sac_x.min() - 1 <= xs.min() and xs.max() <= sac_x.max() + 1
    # soft tissue (blood and ligament, no contrast in this case: about 50 HU), while the fat behind the sac stays fat
    assert 20.0 <= np.median(ct[core]) <= 90.0
    lf_slices, lf_weight = ligamentum_flavum_weight(st, clean_case.grid.body_box(), clean_case.anatomy)
    lf = np.zeros(st.shape, np.float32)
    lf[lf_slices] = lf_weight
    other_fat = (st == C["epidural_fat"]) & (w == 0) & (lf == 0)  # beside and behind the sac, off the ligaments
    assert other_fat.sum() > 50 and np.median(ct[other_fat]) < -20.0


def test_codes_and_labels_do_not_see_it(clean_canal_case):
    clean_case = clean_canal_case
    """The same case rendered without the step has the same structure map and labels."""
    import spinect.phantom.render as render

    saved = render.paint_anterior_epidural
    try:
        render.paint_anterior_epidural = lambda *args, **kwargs: None
        plain = generate_case(3, shape_zyx=(48, 80, 80), noise=False, window_tables=False, degeneration=False)
    finally:
        render.paint_anterior_epidural = saved
    np.testing.assert_array_equal(_arr(plain.structures), _arr(clean_case.structures))
    np.testing.assert_array_equal(_arr(plain.labels), _arr(clean_case.labels))
    changed = _arr(plain.ct) != _arr(clean_case.ct)
    assert changed.any() and np.all(_arr(clean_case.structures)[changed] == C["epidural_fat"])
