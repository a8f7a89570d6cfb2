"""Validate uncertainty and island removal on phantom test cases (issue: show annotators where to look).

Prints (and writes to docs/uncertainty_validation.md with a PNG):
1. error rate per voxel-wise uncertainty level (vote entropy of flip-TTA members, SepNet eq. 11),
   all voxels and within the predicted foreground (as SepNet's Fig. 12);
2. error rate of the top-decile over the bottom-decile uncertain voxels (predictive entropy,
   near the predicted foreground: the predicted foreground dilated by 2 mm), goal >= 10x;
3. HD95 before/after false-positive island removal on predictions with injected islands, and on
   the untouched predictions (goal: better where islands exist, never worse).

Usage: python benchmarks/validate_uncertainty.py [--model M.pt] [--cases 5] [--seed 880000]
The default model was trained on synthetic anatomy; these are phantom results.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--seed", type=int, default=880000, help="phantom seeds seed+i (not used in training)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128))
    parser.add_argument("--islands", type=int, default=6, help="islands injected per case")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "uncertainty_validation.md")
    args = parser.parse_args()

    import torch

    from spinect.api import resolve_model_path
    from spinect.metrics import surface_distances_mm
    from spinect.model_file import load_model
    from spinect.phantom import generate_case
    from spinect.pipeline import prepare_network_input
    from spinect.postprocess import suppress_islands
    from spinect.uncertainty import predict_ensemble

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_path = resolve_model_path(args.model)
    network, plan = load_model(model_path, allow_untrained=True)
    levels: dict[float, list[int]] = {}
    levels_fg: dict[float, list[int]] = {}
    decile_ratios, hd_rows = [], []
    rng = np.random.default_rng(args.seed)
    for i in range(args.cases):
        case = generate_case(args.seed + i, shape_zyx=tuple(args.shape))
        _, volume = prepare_network_input(case.ct, plan)  # phantom grid is 1 mm: same grid
        out = predict_ensemble(volume, [network], tta=True, device="cpu", patch_size_zyx=plan.patch_size_zyx,
                               stride_zyx=plan.stride_zyx, blend=plan.blend)
        import SimpleITK as sitk

        truth = sitk.GetArrayFromImage(case.labels)
        pred = out.probabilities.argmax(axis=0).astype(np.uint8)
        error = pred != truth
        fg = pred > 0
        for level in np.unique(np.round(out.vote_entropy, 3)):
            at = np.round(out.vote_entropy, 3) == level
            levels.setdefault(float(level), [0, 0])
            levels[float(level)][0] += int(error[at].sum())
            levels[float(level)][1] += int(at.sum())
            levels_fg.setdefault(float(level), [0, 0])
            levels_fg[float(level)][0] += int(error[at & fg].sum())
            levels_fg[float(level)][1] += int((at & fg).sum())
        near = ndimage.binary_dilation(fg, iterations=2)
        u = out.predictive_entropy[near]
        e = error[near]
        order = np.argsort(u, kind="stable")
        k = max(1, len(order) // 10)
        bottom, top = e[order[:k]].mean(), e[order[-k:]].mean()
        decile_ratios.append((top, bottom))
        spacing = plan.spacing_zyx_mm
        injected = _inject_islands(pred, truth, rng, n=args.islands)
        for name, labels in (("injected", injected), ("as predicted", pred)):
            cleaned, removed = suppress_islands(labels, spacing)
            for cls, cname in ((1, "bone"), (2, "nerve")):
                before = surface_distances_mm(labels == cls, truth == cls, spacing_zyx_mm=spacing).hd95_mm
                after = surface_distances_mm(cleaned == cls, truth == cls, spacing_zyx_mm=spacing).hd95_mm
                hd_rows.append((i, name, cname, before, after, sum(r.label_value == cls for r in removed)))
        print(f"case {i}: top/bottom decile error {top:.3f}/{bottom:.4f}", flush=True)
    report = _report(model_path, plan, args, levels, levels_fg, decile_ratios, hd_rows)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    _plot(levels_fg, args.out.with_suffix(".png"))
    return 0


def _inject_islands(pred: np.ndarray, truth: np.ndarray, rng, *, n: int) -> np.ndarray:
    """Add n small cubic bone/nerve islands (27-125 voxels) at least 15 mm from any foreground."""
    labels = pred.copy()
    far = ndimage.distance_transform_edt((pred == 0) & (truth == 0)) > 15
    candidates = np.argwhere(far)
    for _ in range(n):
        if len(candidates) == 0:
            break
        z, y, x = candidates[rng.integers(len(candidates))]
        r = int(rng.integers(1, 3))
        labels[max(0, z - r):z + r + 1, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = int(rng.integers(1, 3))
    return labels


def _report(model_path, plan, args, levels, levels_fg, deciles, hd_rows) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"# Uncertainty and island-removal validation ({datetime.date.today()}, commit {commit})", "",
             f"Model `{model_path.name}` ({plan.training_status}; trained on synthetic phantom anatomy), "
             f"{args.cases} phantom cases (seeds {args.seed}..{args.seed + args.cases - 1}, shape {tuple(args.shape)}), "
             "flip TTA (4 members).", "", "## Error rate per uncertainty level (vote entropy, nats)", "",
             "| level | voxels | error rate | voxels in predicted fg | error rate in predicted fg |", "|---|---|---|---|---|"]
    for level in sorted(levels):
        e, n = levels[level]
        ef, nf = levels_fg.get(level, [0, 0])
        lines.append(f"| {level:.3f} | {n} | {e / max(n, 1):.4f} | {nf} | {ef / max(nf, 1) if nf else float('nan'):.4f} |")
    top = np.mean([t for t, _ in deciles])
    bottom = np.mean([b for _, b in deciles])
    ratio = top / bottom if bottom > 0 else float("inf")
    lines += ["", "## Top vs bottom decile (predictive entropy, predicted foreground + 2 voxels)", "",
              f"error rate top decile {top:.4f}, bottom decile {bottom:.5f}: ratio "
              + (f"{ratio:.1f}x" if np.isfinite(ratio) else "unbounded (no error at all in the bottom decile)")
              + f" (goal >= 10x: {'met' if ratio >= 10 else 'MISSED'})", "",
              "## HD95 (mm) before/after island removal", "", "| case | prediction | class | HD95 before | HD95 after | islands removed |",
              "|---|---|---|---|---|---|"]
    for case, name, cls, before, after, removed in hd_rows:
        lines.append(f"| {case} | {name} | {cls} | {before:.2f} | {after:.2f} | {removed} |")
    worse = [r for r in hd_rows if r[4] > r[3] + 1e-6]
    better = [r for r in hd_rows if r[4] < r[3] - 1e-6]
    lines += ["", f"rows where removal made HD95 worse: {len(worse)}; better: {len(better)}; unchanged: "
              f"{len(hd_rows) - len(worse) - len(better)} (goal: better where islands exist, never worse)", "",
              ISLAND_RULE_NOTE, ""]
    return "\n".join(lines)


ISLAND_RULE_NOTE = """## How the nerve island rule was set

The rule's parameters (keep nerve pieces >= 300 mm3 and tube-shaped pieces >= 100 mm3 with
elongation >= 3 that reach the image edge within 30 mm of bone; keep pieces within 10 mm of a kept
piece, chained) were chosen on development
phantoms, seeds 880000..880009, where the previous rule (5 mm from the main component only)
removed true root fragments: pieces of the phantom's detached roots (6-218 voxels, 6-20 mm from the
sac) that the model predicted as a dotted line. On those seeds the model's own false islands are
compact blobs (elongation 1.1-1.7) 2-5 mm from bone and 10-60 mm from the sac. The table above is
from the seeds named at the top; the report of record uses seeds the rule was not tuned on
(`--seed 880010`).

With the previous default model (base width 8, 3,000 iterations) removal made nerve HD95 worse in
two held-out cases (1.41 -> 2.00 mm and 2.00 -> 2.24 mm): there the phantom's detached roots were
predicted as compact blobs of 26-123 voxels (elongation 1.7-2.9) 23-26 mm from every other nerve
piece, which from the label map alone look exactly like the injected hot spots (blobs >= 15 mm from
everything); the network's mean nerve probability did not separate them either (0.56-0.82 for
true fragments, 0.49-0.82 for false islands). The current default model (base width 6, 5,000
iterations; nerve Dice 0.881 vs 0.850 on the test phantoms) changes that: with it the same rule
is never worse on the held-out seeds (table above; in those two cases nerve HD95 is now
1.41 mm before and after removal). The limit stands for weaker
models: an isolated compact blob far from every other nerve piece is removed, whether a hot spot
or a root the model failed to connect; the removal report lists it with its volume, position and
distance, and `--keep-islands` keeps everything.

The edge-and-bone condition for detached pieces came from large fields of view
(benchmarks/validate_large_fov.py, docs/large_fov_validation.md): there the earlier rule (any
piece >= 300 mm3, or tube-shaped >= 100 mm3, kept wherever it was) kept the model's false nerve
pieces up to 100 mm from any nerve (demo phantom: nerve HD95 82 mm). Every detached piece of the
phantom's truth on the crops above reaches the image edge (it is a root the field of view cut
off), 2-26 mm from the sac and 2-22 mm from bone, so the condition keeps all of them."""


def _plot(levels_fg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(k for k in levels_fg if levels_fg[k][1] > 0)
    rates = [levels_fg[k][0] / levels_fg[k][1] for k in keys]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([f"{k:.2f}" for k in keys], rates, color="tab:orange")
    ax.set_xlabel("uncertainty level (vote entropy, nats)")
    ax.set_ylabel("error rate in predicted foreground")
    ax.set_title("Error rate per uncertainty level (phantom, flip TTA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
