"""Blinded reading test: can a reader tell phantom v2 CT tiles from real CT tiles?

Issue 14 asks that a v2 phantom "beside the real crop and the chest CT, same window, is hard to
tell apart by eye". This script turns that into a count. ``make`` writes anonymised tiles (same
field of view, same 1 mm pixel grid, same two windows, shuffled, random names, no titles) from the
real lumbar crop, the real chest CT and phantom v2 cases rendered on each real case's grid, and a
key kept apart from them. A reader who has not seen the key labels each tile real or phantom.
``score`` prints the reader's accuracy, its binomial p-value against guessing, and the per-source
table.

Run::

    python benchmarks/blind_read.py make TILES_DIR KEY.json [--chest ~/.cache/spinect/real_ct/chest]
    # give TILES_DIR (only) to a reader; they write ANSWERS.json: {"tile_01": "real" | "phantom", ...}
    python benchmarks/blind_read.py score KEY.json ANSWERS.json
    # forced choice: each picture holds a real tile (A or B) and a phantom tile; answers "A" | "B",
    # the letter the reader takes for the phantom
    python benchmarks/blind_read.py make --pairs PAIRS_DIR KEY.json --chest ...

Each tile is one slice (axial or sagittal) shown in a bone window (W 1500 / L 300) on the left and
a soft-tissue window (W 400 / L 40) on the right, 90 x 90 mm (sagittal: 66 x 90 mm, the crop's
height), resampled by linear interpolation to 1 mm pixels and enlarged 4x for viewing. Real tiles:
axial slices at random heights through the labelled lumbar vertebrae and sagittal slices spread
over 6 mm either side of the bone's midline; phantom tiles likewise, half on the crop's grid
(1.5 mm, no IV contrast, lumbosacral field, through L1-L4, like the crop) and half on the chest
CT's (0.70 x 0.70 x 2.5 mm, IV contrast, thoracolumbar field with the thorax, through T12-L3, like
the chest CT). A benchmark, not a test: the reader is a person (or a model) and
the result is theirs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantom_appearance_vs_real import chest_ct, real_crop  # noqa: E402

#: (width, level) HU of the two windows side by side in every tile.
WINDOWS = ((1500.0, 300.0), (400.0, 40.0))
#: Tile field of view (mm): axial (y, x) and sagittal (z, y). The crop is 70 x 110 x 110 mm.
AXIAL_MM = (90.0, 90.0)
SAGITTAL_MM = (66.0, 90.0)
PIXEL_MM = 1.0
ZOOM = 4
CROP_GRID_MM = (1.5, 1.5, 1.5)
CHEST_GRID_MM = (2.5, 0.703125, 0.703125)


def resample_plane(ct: np.ndarray, spacing_zyx_mm, centre_zyx_mm, axes: tuple[int, int], size_mm) -> np.ndarray:
    """A plane of ``ct`` through ``centre_zyx_mm`` spanning array axes ``axes`` (rows, columns),
    ``size_mm`` across, sampled by linear interpolation at :data:`PIXEL_MM` pixels.

    Args:
        ct: (z, y, x) HU. spacing_zyx_mm / centre_zyx_mm: mm, array order.

    Returns:
        (rows, columns) float32 HU.
    """
    from scipy import ndimage

    n = [int(round(s / PIXEL_MM)) for s in size_mm]
    coords = [np.full(n, c / s, dtype=np.float64) for c, s in zip(centre_zyx_mm, spacing_zyx_mm)]
    for k, (ax, m) in enumerate(zip(axes, n)):
        offsets = (np.arange(m) - (m - 1) / 2.0) * PIXEL_MM / spacing_zyx_mm[ax]
        coords[ax] = coords[ax] + (offsets[:, None] if k == 0 else offsets[None, :])
    return ndimage.map_coordinates(ct.astype(np.float32), coords, order=1, mode="nearest")


def _clamped_centre(shape, spacing, centre, axes, size_mm) -> list[float]:
    """Move the centre (mm) so that the plane's extent stays inside the volume along its axes."""
    out = list(centre)
    for ax, s in zip(axes, size_mm):
        lo, hi = s / 2.0, (shape[ax] - 1) * spacing[ax] - s / 2.0
        out[ax] = float(np.clip(out[ax], lo, max(lo, hi)))
    return out


def tile_image(plane: np.ndarray, *, sagittal: bool) -> np.ndarray:
    """uint8 (rows, 2 * columns + gap) picture: bone window | soft-tissue window, enlarged ZOOM x.
    Sagittal planes are flipped so that superior is up."""
    if sagittal:
        plane = plane[::-1]
    panels = []
    for width, level in WINDOWS:
        g = np.clip((plane - (level - width / 2.0)) / width, 0.0, 1.0)
        panels.append((255.0 * g + 0.5).astype(np.uint8))
    gap = np.full((plane.shape[0], 2), 255, np.uint8)
    both = np.concatenate([panels[0], gap, panels[1]], axis=1)
    return np.kron(both, np.ones((ZOOM, ZOOM), np.uint8))


def slices_of(ct, bone, spacing, rng, *, n_axial: int, n_sagittal: int, source: str) -> list[dict]:
    """Planes through a labelled bone mask: axial at random heights within its z range (5 mm
    margins), centred in-plane on that slice's bone; sagittal within 6 mm of the bone's midline,
    centred on the mask's middle height."""
    idx = np.argwhere(bone)
    zs = np.unique(idx[:, 0])
    margin = int(math.ceil(5.0 / spacing[0]))
    zs = zs[(zs >= zs.min() + margin) & (zs <= zs.max() - margin)] if zs.size > 2 * margin + 2 else zs
    out = []
    for z in rng.choice(zs, size=n_axial, replace=False):
        cy, cx = np.argwhere(bone[z]).mean(axis=0)
        centre = _clamped_centre(ct.shape, spacing, (z * spacing[0], cy * spacing[1], cx * spacing[2]), (1, 2), AXIAL_MM)
        out.append({"source": source, "plane": "axial",
                    "image": tile_image(resample_plane(ct, spacing, centre, (1, 2), AXIAL_MM), sagittal=False)})
    cz, cy, cx = idx.mean(axis=0)
    # several sagittal planes of one case spread over +-6 mm (random draws could fall within a
    # voxel of each other and show one slice twice)
    spread = np.linspace(-6.0, 6.0, n_sagittal) + rng.uniform(-1.0, 1.0, n_sagittal) if n_sagittal > 1 \
        else rng.uniform(-6.0, 6.0, n_sagittal)
    for offset in rng.permutation(spread):
        x_mm = cx * spacing[2] + float(offset)
        centre = _clamped_centre(ct.shape, spacing, (cz * spacing[0], cy * spacing[1], x_mm), (0, 1), SAGITTAL_MM)
        out.append({"source": source, "plane": "sagittal",
                    "image": tile_image(resample_plane(ct, spacing, centre, (0, 1), SAGITTAL_MM), sagittal=True)})
    return out


def phantom_volume(seed: int, grid: str):
    """(ct, bone mask, spacing, note) of a phantom v2 case on the crop's or the chest CT's grid.

    Like the real case it stands beside: on the crop's grid the default (lumbosacral) field and
    L1-L4 (the crop holds L2-L4); on the chest CT's grid the thoracolumbar field (thorax, lungs,
    diaphragm; centred on T12/L1) and T12-L3, as the chest CT's labels (L1-L3 before round 15)."""
    import SimpleITK as sitk
    from spinect.phantom import STRUCTURE_CODES, generate_case

    spacing = CROP_GRID_MM if grid == "crop" else CHEST_GRID_MM
    extent_mm = (165.0, 150.0, 150.0)
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing))
    case = generate_case(seed, shape_zyx=shape, spacing_zyx_mm=spacing, window_tables=False,
                         appearance_overrides={"iv_contrast": grid == "chest"},
                         field="lumbosacral" if grid == "crop" else "thoracolumbar")
    ct = sitk.GetArrayFromImage(case.ct).astype(np.float32)
    st = sitk.GetArrayFromImage(case.structures)
    levels = ("L1", "L2", "L3", "L4") if grid == "crop" else ("L1", "L2", "L3")
    bone = np.isin(st, [STRUCTURE_CODES[n] for n in levels])
    if grid == "chest":
        bone |= _t12_mask(case, st)
    a = case.truth["appearance"]["ct"]
    note = f"seed {seed}, {grid} grid, age {a['age_years']:.0f}, {a['kernel']} kernel, noise {a['noise_sd_hu']:.0f} HU"
    return ct, bone, spacing, note


def _t12_mask(case, structures: np.ndarray) -> np.ndarray:
    """T12 of a thoracolumbar-field phantom: the ``thoracic_vertebra`` voxels (one code for T1-T12)
    within 2 mm of T12's endplates along its axis, so the chest-grid tiles span T12-L3 as the real
    chest CT's labels do (the posterior lung bases lie beside T12; before, phantoms showed L1-L3 only)."""
    from spinect.phantom import STRUCTURE_CODES

    idx = np.argwhere(structures == STRUCTURE_CODES["thoracic_vertebra"])
    frame = case.anatomy.thorax.frames["T12"]
    body = case.grid.world_to_body(case.grid.index_to_world(idx))
    axis = frame.superior.centre - frame.inferior.centre
    half = 0.5 * float(np.linalg.norm(axis))
    along = (body - 0.5 * (frame.superior.centre + frame.inferior.centre)) @ (axis / (2.0 * half))
    mask = np.zeros(structures.shape, bool)
    mask[tuple(idx[np.abs(along) <= half + 2.0].T)] = True
    return mask


def pair_up(items: list[dict], rng: np.random.Generator) -> list[tuple[dict, dict]]:
    """(real, phantom) tile pairs, each phantom with a real tile of the same plane from the real
    case whose grid the phantom was rendered on, in random order."""
    out = []
    for real_source, grid in (("real lumbar crop", "crop grid"), ("real chest CT", "chest grid")):
        for plane in ("axial", "sagittal"):
            reals = [t for t in items if t["source"] == real_source and t["plane"] == plane]
            fakes = [t for t in items if grid in t["source"] and t["plane"] == plane]
            out += list(zip(reals, fakes))
    return [out[i] for i in rng.permutation(len(out))]


def stack_pair(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """One picture: ``top`` (A) above ``bottom`` (B), a white band between them."""
    band = np.full((6 * ZOOM, top.shape[1]), 255, np.uint8)
    return np.concatenate([top, band, bottom], axis=0)


def make(tiles_dir: Path, key_path: Path, chest_dir: Path | None, *, seed: int, n_phantom: int, pairs: bool = False) -> None:
    """Write the shuffled tiles and the key (tile name -> truth, source, plane). ``pairs``: each
    picture holds a real tile and a phantom tile of the same grid and plane, A above B, and the
    truth is the letter of the phantom."""
    from PIL import Image

    if tiles_dir.exists() and any(tiles_dir.iterdir()):
        sys.exit(f"error: {tiles_dir} is not empty; give a new folder so that no old tile is read with the new key")
    rng = np.random.default_rng(seed)
    items = []
    ct, bone, spacing = real_crop()
    items += slices_of(ct, bone, spacing, rng, n_axial=3, n_sagittal=3, source="real lumbar crop")
    if chest_dir is not None:
        ct, bone, spacing = chest_ct(chest_dir)
        items += slices_of(ct, bone, spacing, rng, n_axial=3, n_sagittal=3, source="real chest CT")
    n_real = len(items)
    n_phantom = n_phantom or n_real
    for k in range(n_phantom // 2):
        grid = "crop" if k % 2 == 0 else "chest"
        ct, bone, spacing, note = phantom_volume(1000 + 100 * seed + k, grid)
        for item in slices_of(ct, bone, spacing, rng, n_axial=1, n_sagittal=1, source=f"phantom v2 ({note})"):
            items.append(item)
        print(f"phantom {k + 1}/{n_phantom // 2}: {note}", flush=True)
    tiles_dir.mkdir(parents=True, exist_ok=True)
    key = {}
    if pairs:
        for rank, (real, fake) in enumerate(pair_up(items, rng), start=1):
            name = f"pair_{rank:02d}"
            phantom_on_top = bool(rng.random() < 0.5)
            top, bottom = (fake, real) if phantom_on_top else (real, fake)
            Image.fromarray(stack_pair(top["image"], bottom["image"])).save(tiles_dir / f"{name}.png")
            key[name] = {"truth": "A" if phantom_on_top else "B", "source": f"{real['source']} vs {fake['source']}",
                         "plane": real["plane"]}
    else:
        for rank, i in enumerate(rng.permutation(len(items)), start=1):
            name = f"tile_{rank:02d}"
            Image.fromarray(items[i]["image"]).save(tiles_dir / f"{name}.png")
            key[name] = {"truth": "phantom" if items[i]["source"].startswith("phantom") else "real",
                         "source": items[i]["source"], "plane": items[i]["plane"]}
    tmp = key_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(key, indent=1))
    tmp.replace(key_path)
    what = f"{len(key)} pairs" if pairs else f"{len(key)} tiles ({n_real} real)"
    print(f"{what} in {tiles_dir}; key in {key_path}")


def binomial_p(correct: int, n: int) -> float:
    """One-sided p-value of at least ``correct`` right out of ``n`` by guessing (p = 1/2)."""
    return sum(math.comb(n, k) for k in range(correct, n + 1)) / 2.0 ** n


def score(key_path: Path, answers_path: Path) -> None:
    key = json.loads(key_path.read_text())
    answers = json.loads(answers_path.read_text())
    missing = sorted(set(key) - set(answers))
    if missing:
        sys.exit(f"error: {answers_path} has no answer for {', '.join(missing)}")
    def answer(name):  # a bare string, or {"answer": ..., "confidence": ..., "cue": ...}
        v = answers[name]
        return v.get("answer") if isinstance(v, dict) else v

    allowed = ("A", "B") if all(k["truth"] in ("A", "B") for k in key.values()) else ("real", "phantom")
    bad = {n: answers[n] for n in key if answer(n) not in allowed}
    if bad:
        sys.exit(f"error: answers must be {' or '.join(repr(a) for a in allowed)}; got {bad}")

    correct = sum(answer(n) == key[n]["truth"] for n in key)
    print(f"{correct} of {len(key)} right ({100.0 * correct / len(key):.0f} %); "
          f"one-sided binomial p against guessing = {binomial_p(correct, len(key)):.4f}")
    print("| tile | truth | source | plane | answer | right |")
    print("|---|---|---|---|---|---|")
    for n in sorted(key):
        k = key[n]
        print(f"| {n} | {k['truth']} | {k['source']} | {k['plane']} | {answer(n)} | {'yes' if answer(n) == k['truth'] else 'no'} |")
    if allowed == ("A", "B"):
        return
    for truth in allowed:
        names = [n for n in key if key[n]["truth"] == truth]
        ok = sum(answer(n) == truth for n in names)
        print(f"{truth} tiles called {truth}: {ok} of {len(names)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write anonymised tiles and their key")
    m.add_argument("tiles_dir", type=Path)
    m.add_argument("key", type=Path)
    m.add_argument("--chest", type=Path, default=None, help="folder with the real chest CT (validate_real_ct.py's cache)")
    m.add_argument("--seed", type=int, default=0, help="draw of slices and order")
    m.add_argument("--phantom-tiles", type=int, default=0, help="phantom tiles (default: as many as real ones)")
    m.add_argument("--pairs", action="store_true",
                   help="forced choice: each picture a real and a phantom tile (same grid and plane), A above B; the reader names the phantom")
    s = sub.add_parser("score", help="score a reader's answers against the key")
    s.add_argument("key", type=Path)
    s.add_argument("answers", type=Path)
    args = parser.parse_args()
    if args.cmd == "make":
        make(args.tiles_dir, args.key, args.chest, seed=args.seed, n_phantom=args.phantom_tiles, pairs=args.pairs)
    else:
        score(args.key, args.answers)


if __name__ == "__main__":
    main()
