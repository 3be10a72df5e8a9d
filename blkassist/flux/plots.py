"""The training-curve plot of a Flux LoRA run: training loss (raw and smoothed) and the
held-out loss of the live and averaged weights at each save."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from blkassist.fsutil import atomic_path


def plot_losses(loss_csv: Path, validation_csv: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    if loss_csv.exists():
        with open(loss_csv) as handle:
            rows = list(csv.DictReader(handle))
        steps = [int(r["step"]) for r in rows]
        losses = np.array([float(r["loss"]) for r in rows])
        axis.plot(steps, losses, color="lightgrey", linewidth=0.8, label="training loss")
        if len(losses) > 1:
            smooth, value = [], losses[0]
            for loss in losses:
                value = 0.95 * value + 0.05 * loss
                smooth.append(value)
            axis.plot(steps, smooth, color="tab:blue", label="training loss (smoothed)")
    if validation_csv.exists():
        with open(validation_csv) as handle:
            rows = list(csv.DictReader(handle))
        for weights, colour in (("ema", "tab:red"), ("live", "tab:orange")):
            points = [(int(r["step"]), float(r["loss"])) for r in rows if r["weights"] == weights]
            if points:
                axis.plot(
                    *zip(*points, strict=True),
                    marker="o",
                    color=colour,
                    label=f"held-out loss ({weights})",
                )
    axis.set_xlabel("step")
    axis.set_ylabel("flow-matching MSE")
    axis.legend()
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
