"""What the GPU check scripts (flux_gpu_check.py, stencil_gpu_check.py, gpu_refine_check.py)
share: their common arguments, a synchronised clock with device-memory readings, medians,
and the run that prints the report as JSON (stdout holds the JSON alone).

Torch is imported by the caller and handed in: `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_RANDOM_SPEC = REPO / "resources" / "flux" / "flux1-dev-random.yaml"
GIB = 2**30


def argument_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser with the arguments every check takes: --model (default: Flux.1-dev's
    architecture with random weights), --no-quantize, --device and --output."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--model",
        default=str(FULL_RANDOM_SPEC),
        help="a random-model spec (.yaml) or a Flux.1-dev diffusers folder",
    )
    parser.add_argument("--no-quantize", action="store_true", help="bf16 base, not qint8")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the script")
    parser.add_argument("--output", help="also write the JSON here")
    return parser


class Clock:
    """Synchronised timing and device memory in GiB. On the CPU (a smoke run) memory
    reads `cpu_memory` (0.0, or None for "not measured")."""

    def __init__(self, torch, device: str, cpu_memory: float | None = 0.0):
        self.torch, self.cuda = torch, torch.device(device).type == "cuda"
        self.cpu_memory = cpu_memory

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, function) -> tuple[float, object]:
        """(seconds, result) of `function()`, the device's queue drained on both sides."""
        self.sync()
        start = time.perf_counter()
        result = function()
        self.sync()
        return time.perf_counter() - start, result

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        """Most memory allocated since the last reset_peak."""
        if not self.cuda:
            return self.cpu_memory
        return round(self.torch.cuda.max_memory_allocated() / GIB, 2)

    def held_gib(self) -> float | None:
        """Memory allocated now."""
        if not self.cuda:
            return self.cpu_memory
        return round(self.torch.cuda.memory_allocated() / GIB, 2)

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name(0) if self.cuda else "cpu"


def warmed_pipeline(components, clock: Clock, size: int, prompt: str, **options) -> tuple:
    """(pipeline, render settings) for square images of `size`, the text encoders back on
    the device (training parks them on the CPU), after a 2-step warm-up image; the peak
    memory is reset after it."""
    from blkassist.flux.generate import render

    components.text_encoder.to(components.device)
    components.text_encoder_2.to(components.device)
    pipe = components.pipeline()
    image = {"width": size, "height": size, "guidance": 3.5, "prompt": prompt, **options}
    render(pipe, seed=0, steps=2, **image)
    clock.reset_peak()
    return pipe, image


def median(values: Iterable[float], digits: int) -> float:
    return round(statistics.median(values), digits)


def run_check(
    args: argparse.Namespace,
    measure: Callable[[], dict],
    failed: Callable[[dict], bool],
    no_gpu: str = "no CUDA device visible; this check needs a GPU",
) -> int:
    """Run `measure()` and print its report as JSON (also to --output): exit status 2
    without a visible GPU for a CUDA run, 1 when `failed(report)`, else 0. Libraries that
    print are sent to stderr: stdout is the JSON alone."""
    import torch

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": no_gpu}))
        return 2
    with contextlib.redirect_stdout(sys.stderr):
        report = measure()
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 1 if failed(report) else 0
