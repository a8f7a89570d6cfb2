#!/usr/bin/env python
"""Replace the shipped default model by a candidate, chosen on real CT, and write its model card.

The decision is taken from one run of ``benchmarks/validate_real_ct.py`` that scored the candidate
beside the shipped model and the threshold baseline (``--model shipped=default --model NAME=CKPT``,
``--stress`` for the phantom rows). The candidate ships only if its bone Dice beats the shipped
model's on every real case in that run; the card lists each real case, the stress-suite phantoms
and the issue's goals (met or missed), and says that the model was trained on synthetic anatomy.

Example::

    python scripts/ship_default_model.py runs/v2mix/ckpt_4000.pt --name ft_v2mix_4000 \\
        --results runs/real_ct/real_ct_results.json --training-note "..."
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineCTSegmentation"))

#: Size limit of a shipped model file (the package is installed with the extension).
MAX_MODEL_MB = 100.0
#: Goals of the default-model issue on real CT and on v2 phantoms.
GOALS = {"crop_bone_dice": 0.90, "chest_bone_dice": 0.85, "nerve_near_canal": 0.90,
         "phantom_bone_dice": 0.97, "phantom_nerve_dice": 0.90, "phantom_hd95_mm": 1.5}


class ShipError(Exception):
    """The candidate may not ship (or bad input): printed as one line, exit code 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="candidate model file (spinect train's last.pt or best.pt)")
    p.add_argument("--name", required=True, help="the candidate's method name in the results JSON")
    p.add_argument("--reference", default="shipped", help="the shipped model's method name in the results JSON")
    p.add_argument("--results", type=Path, required=True, help="real_ct_results.json of validate_real_ct.py")
    p.add_argument("--training-note", required=True, help="one paragraph: data, steps, machine, wall time")
    p.add_argument("--models-dir", type=Path, default=REPO / "SpineCTSegmentation" / "spinect" / "models")
    return p.parse_args(argv)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def check_candidate(results: dict, name: str, reference: str) -> dict[str, tuple[float, float]]:
    """Bone Dice (candidate, reference) per real case; ShipError unless the candidate wins every case."""
    cases = results.get("cases", {})
    if not cases:
        raise ShipError("the results hold no real case; run validate_real_ct.py with its real cases")
    pairs = {}
    for case, entry in cases.items():
        methods = entry["methods"]
        for method in (name, reference):
            if method not in methods:
                raise ShipError(f"{method!r} was not scored on {case}; pass --model {method}=PATH to the benchmark")
        pairs[case] = (methods[name]["dice"], methods[reference]["dice"])
    worse = [f"{c} ({a:.3f} <= {b:.3f})" for c, (a, b) in pairs.items() if not a > b]
    if worse:
        raise ShipError(f"{name} does not beat {reference} on every real case: {', '.join(worse)}; not shipped")
    return pairs


def real_ct_table(results: dict, methods: list[str]) -> list[str]:
    cols = ["case", "method", "bone Dice", "HD95 mm", "SDice@1mm", "rec <100 HU", "FP mL", "nerve near canal", "canal as nerve"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for case, entry in results["cases"].items():
        for m in methods:
            s = entry["methods"][m]
            nerve = s.get("nerve") or {}
            lines.append(f"| {case} | {m} | {_fmt(s.get('dice'))} | {_fmt(s.get('hd95_mm'), 1)} | {_fmt(s.get('surface_dice'))} | "
                         f"{_fmt(s['recall_by_hu']['<100']['recall'])} | {_fmt(s.get('fp_volume_ml'), 1)} | "
                         f"{_fmt(nerve.get('share_nerve_near_canal'))} | {_fmt(nerve.get('share_canal_labelled_nerve'))} |")
    return lines


def stress_table(results: dict, name: str) -> tuple[list[str], list[dict]]:
    rows = [r for r in results.get("stress", []) if r.get("method") == name and not r.get("skipped")]
    lines = ["| phantom variant | grid | bone Dice | bone HD95 mm | nerve Dice | nerve HD95 mm |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['grid']} | {_fmt(r.get('bone_dice'))} | {_fmt(r.get('bone_hd95_mm'), 1)} | "
                     f"{_fmt(r.get('nerve_dice'))} | {_fmt(r.get('nerve_hd95_mm'), 1)} |")
    return lines, rows


def goal_lines(results: dict, name: str, stress_rows: list[dict]) -> list[str]:
    cases = results["cases"]
    out = []

    def line(what: str, value, goal: str, met: bool) -> None:
        out.append(f"- {what}: {_fmt(value)} ({'met' if met else 'MISSED'}, goal {goal})")

    for case, entry in cases.items():
        d, t = entry["methods"][name]["dice"], entry["methods"].get("threshold", {}).get("dice")
        if t is not None:
            line(f"{case}: bone Dice vs threshold {t:.3f}", d, "> threshold", d > t)
    if "crop" in cases:
        d = cases["crop"]["methods"][name]["dice"]
        line("crop (real L3): bone Dice", d, f">= {GOALS['crop_bone_dice']}", d >= GOALS["crop_bone_dice"])
    if "chest" in cases:
        d = cases["chest"]["methods"][name]["dice"]
        line("chest (real vertebrae + ribs): bone Dice", d, f">= {GOALS['chest_bone_dice']}", d >= GOALS["chest_bone_dice"])
    for case, entry in cases.items():
        v = (entry["methods"][name].get("nerve") or {}).get("share_nerve_near_canal")
        line(f"{case}: nerve near canal", v, f">= {GOALS['nerve_near_canal']}", v is not None and v >= GOALS["nerve_near_canal"])
    v2 = [r for r in stress_rows if r["variant"].startswith("v2 CT-realistic")]
    for r in v2:
        ok = (r["bone_dice"] >= GOALS["phantom_bone_dice"] and r["nerve_dice"] >= GOALS["phantom_nerve_dice"]
              and max(r["bone_hd95_mm"], r["nerve_hd95_mm"]) <= GOALS["phantom_hd95_mm"])
        out.append(f"- v2 phantom ({r['grid']}): bone {_fmt(r['bone_dice'])}, nerve {_fmt(r['nerve_dice'])}, HD95 "
                   f"{_fmt(r['bone_hd95_mm'], 1)} / {_fmt(r['nerve_hd95_mm'], 1)} mm ({'met' if ok else 'MISSED'}, goal bone >= "
                   f"{GOALS['phantom_bone_dice']}, nerve >= {GOALS['phantom_nerve_dice']}, HD95 <= {GOALS['phantom_hd95_mm']} mm)")
    out.append("- vertebral levels (crop L2-L4, chest T12-L3): MISSED, this model has no level classes (bone, nerve only)")
    return out


def parent_description(path: Path) -> str:
    """What the model being replaced was trained on, from its own plan (not assumed)."""
    if not path.is_file():
        return "no previous default model"
    from spinect.model_file import load_plan

    prov = load_plan(path).provenance
    return (f"from a {prov.get('iterations', '?')}-iteration training schedule on "
            f"{prov.get('training_data', 'unspecified data')}; see that model's own card in the repository history")


def model_card(plan, *, name: str, reference: str, results: dict, note: str, digest: str, size_mb: float,
               n_params: int, old_digest: str, parent: str = "") -> str:
    prov = plan.provenance
    methods = [m for m in ("threshold", reference, name) if m in next(iter(results["cases"].values()))["methods"]]
    stress_lines, stress_rows = stress_table(results, name)
    env = results.get("environment", {})
    summary = " / ".join(f"{c} {e['methods'][name]['dice']:.3f}" for c, e in results["cases"].items())
    lines = [
        "# SPINECT default model (`spinect_default.pt`)",
        "",
        "> **Trained on synthetic anatomy only** (the project's lumbosacral CT phantom, v1 and v2), never on",
        "> patient CT. On the three real CTs we have it reaches bone Dice " + summary + ",",
        "> below a plain HU threshold on some of them, and its nerve labels are not plausible on real CT.",
        "> It is **not validated for clinical use**: do not use it for diagnosis, treatment or surgical",
        "> planning. Fine-tune it on your own labelled cases (`spinect train DATA --init default`).",
        "",
        "## What it is",
        f"- 3D U-Net of SPINECT (Fan, Liu et al.), compact width: architecture `{json.dumps(plan.architecture)}`,",
        f"  {n_params:,} parameters, file {size_mb:.2f} MB.",
        f"- Input: CT in HU, resampled to {plan.spacing_zyx_mm} mm (z, y, x), clipped to {plan.hu_window} HU, z-scored with",
        f"  mean {plan.intensity_mean:.2f} HU / std {plan.intensity_std:.2f} HU.",
        f"- Sliding window {plan.patch_size_zyx} voxels, stride {plan.stride_zyx}, blend `{plan.blend}`; median smoothing {plan.smoothing_mm} mm.",
        f"- Output labels: {', '.join(f'{i} {c}' for i, c in enumerate(plan.class_names))}.",
        "",
        "## Training",
        f"- {note}",
        f"- Fine-tuned from the previous default model (sha256 `{old_digest}`, {parent}) with `spinect train --init`.",
        f"- {prov.get('iterations')} iterations, batch {prov.get('batch_size')}, Adam lr {prov.get('lr')}, seed {prov.get('seed')}, "
        f"on {str(prov.get('device', 'cpu')).upper()} in {prov.get('precision', 'float32')}; loss {prov.get('loss')}.",
        f"- Last command: `{prov.get('command')}`.",
        f"- spinect {prov.get('spinect_version')}, torch {prov.get('torch_version')}.",
        "",
        "## Chosen on real CT",
        "",
        f"One run of `benchmarks/validate_real_ct.py` ({env.get('date', '?')}, {env.get('cpu', '?')}, commit {env.get('commit', '?')});",
        "bone truth: crop = VerSe-style vertebra labels, dicom3 = one labelled vertebra, chest = model-predicted",
        "vertebrae + ribs (not manual). Nerve columns are plausibility only (no real nerve truth): share of",
        "predicted nerve within 20 mm of the spinal canal, share of the canal labelled nerve.",
        "",
        *real_ct_table(results, methods),
        "",
        "## Phantoms (stress suite of the same run, exact labels, 2 cases per row)",
        "",
        *stress_lines,
        "",
        "## Against the goals",
        "",
        *goal_lines(results, name, stress_rows),
        "",
        "## Integrity",
        f"- sha256 of `spinect_default.pt`: `{digest}` (also in `spinect_default.json`).",
        f"- Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.",
        "",
    ]
    return "\n".join(lines)


def ship(args: argparse.Namespace) -> Path:
    from spinect.io.atomic import atomic_output
    from spinect.model_file import load_model, save_model, sha256_of_file

    if not args.results.is_file():
        raise ShipError(f"results file {args.results} does not exist; run benchmarks/validate_real_ct.py first")
    results = json.loads(args.results.read_text(encoding="utf-8"))
    pairs = check_candidate(results, args.name, args.reference)
    network, plan = load_model(args.checkpoint)
    target = args.models_dir / "spinect_default.pt"
    old_digest = sha256_of_file(target) if target.is_file() else "none"
    parent = parent_description(target)
    provenance = {k: v for k, v in plan.provenance.items() if k not in ("init_model", "data")}
    provenance.update(
        training_data="synthetic lumbosacral phantoms (spinect.phantom v1, then v2: real bone shapes and primitives, "
                      "CT-realistic and randomised appearance, surroundings); no patient data",
        fine_tuned_from_sha256=old_digest,
        metrics={**provenance.get("metrics", {}),
                 "real_ct_bone_dice": {c: round(a, 4) for c, (a, _) in pairs.items()}},
        limits="Trained on synthetic anatomy only; real-CT bone Dice in the model card; nerve labels not plausible "
               "on real CT. Not validated for clinical use.",
    )
    plan = plan.replace(provenance=provenance, training_status="trained")
    digest = save_model(target, network.to("cpu"), plan)
    size_mb = target.stat().st_size / 2**20
    if size_mb > MAX_MODEL_MB:
        raise ShipError(f"model file is {size_mb:.1f} MB > {MAX_MODEL_MB} MB")
    n_params = sum(p.numel() for p in network.parameters())
    card = model_card(plan, name=args.name, reference=args.reference, results=results, note=args.training_note,
                      digest=digest, size_mb=size_mb, n_params=n_params, old_digest=old_digest, parent=parent)
    with atomic_output(args.models_dir / "MODEL_CARD.md") as tmp:
        tmp.write_text(card, encoding="utf-8")
    for path in (target, target.with_suffix(".json"), args.models_dir / "MODEL_CARD.md"):
        path.chmod(0o644)
    print(f"shipped {args.checkpoint} as {target} ({size_mb:.2f} MB, sha256 {digest}); "
          + ", ".join(f"{c} {a:.3f} (was {b:.3f})" for c, (a, b) in pairs.items()))
    return target


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ship(args)
    except ShipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
