"""Benchmark: seconds per training step of the SPINECT U-Net, by precision and memory layout.

One step = what :class:`spinect.train.trainer` does per iteration once the patches are sampled:
forward pass of a batch of 32 x 64 x 64 patches, SPINECT's weighted cross-entropy, backward pass,
Adam update. Configurations, all in this process on the same random batch:

* float32, contiguous layout -- the trainer before ``channels_last`` (reference);
* float32, ``channels_last_3d`` -- the trainer's default (``spinect train``);
* bfloat16 autocast, ``channels_last_3d`` -- ``spinect train --precision bf16`` (weights, Adam
  and loss in float32).

Medians over ``--steps`` steps after two warm-up steps, per base width; the ratio to the
reference is printed. Patch sampling and augmentation are not included (they run before the step).

Run ``python benchmarks/bench_training_step.py --output docs/benchmarks_training.md``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineCTSegmentation"))

from spinect.nets import build_network  # noqa: E402
from spinect.train.loss import weighted_cross_entropy  # noqa: E402

CONFIGS = (
    ("float32, contiguous (reference)", torch.contiguous_format, None),
    ("float32, channels_last_3d (default)", torch.channels_last_3d, None),
    ("bfloat16 autocast, channels_last_3d (--precision bf16)", torch.channels_last_3d, torch.bfloat16),
)


def step_seconds(base_width: int, memory_format, amp_dtype, *, batch: int, steps: int, seed: int = 0) -> list[float]:
    """Wall seconds of ``steps`` training steps (after 2 warm-up steps) of a fresh network."""
    torch.manual_seed(seed)
    network = build_network(base_width=base_width).train().to(memory_format=memory_format)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 1, 32, 64, 64, generator=generator).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 3, (batch, 32, 64, 64), generator=generator)
    weights = (1.0, 1.0, 2.0)
    times = []
    for index in range(steps + 2):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = network(images)
        loss = weighted_cross_entropy(logits.float(), labels, weights)
        loss.backward()
        optimizer.step()
        if index >= 2:
            times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 6, 32], help="base widths (default 8 6 32)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (default 8)")
    parser.add_argument("--batch", type=int, default=4, help="patches per step (default 4, as SPINECT)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown report here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Training step benchmark", "",
        f"{date}; {platform.processor() or platform.machine()}, {args.threads} threads; torch {torch.__version__}; "
        f"batch {args.batch} patches of 32×64×64; median of {args.steps} steps after 2 warm-up steps "
        "(forward, weighted cross-entropy, backward, Adam; patch sampling and augmentation not included).", "",
        "| base width | configuration | s / step | vs reference |", "|---|---|---|---|",
    ]
    for width in args.widths:
        reference = None
        for name, memory_format, amp_dtype in CONFIGS:
            steps = max(3, args.steps // 4) if width >= 32 else args.steps
            median = statistics.median(step_seconds(width, memory_format, amp_dtype, batch=args.batch, steps=steps))
            reference = reference or median
            lines.append(f"| {width} | {name} | {median:.3f} | {reference / median:.2f}× |")
            print(lines[-1], flush=True)
    lines += ["", "bfloat16 is not the trainer's default: on the CPU its backward passes are not bit-reproducible "
              "(a resumed run no longer ends on exactly the same weights), see `spinect train --help`."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
