"""Progress lines for long jobs: a training run's step / total, loss, learning rate, speed,
ETA and CUDA memory peak at an interval (config `progress`), and a mural pass's finished
tiles after each batch. Logging only: nothing here changes a result."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """1h 04m, 3m 20s, 42s."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class ProgressSettings:
    """A line every `every_steps` steps or `every_seconds` seconds, whichever comes first
    (and at the first and last step)."""

    SECTION: ClassVar[str] = "progress"

    every_steps: int
    every_seconds: float

    @classmethod
    def from_config(cls, config: Mapping | None) -> ProgressSettings | None:
        """From the schema-filled `progress` section (None: no progress lines)."""
        if config is None:
            return None
        return cls(every_steps=config["every_steps"], every_seconds=config["every_seconds"])


class TrainingProgress:
    """Feed it every step's loss and learning rate; it logs when a line is due."""

    def __init__(
        self,
        label: str,
        total: int,
        first_step: int,
        settings: ProgressSettings | None,
        device: torch.device | str = "cpu",
        unit: str = "step",
    ):
        self.label, self.total, self.unit = label, total, unit
        self.settings = settings
        # Imported here: the mural jobs that only log pass_progress (allocation, assembly)
        # must not pay torch's import (~1.5 s each); every trainer has it loaded already.
        import torch

        self.device = torch.device(device)
        self.first_step = first_step
        self.started = self.last_time = time.perf_counter()
        self.last_step = first_step
        self.losses: list[float] = []

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.settings is None:
            return
        self.losses.append(loss)
        now = time.perf_counter()
        due = (
            step % self.settings.every_steps == 0
            or now - self.last_time >= self.settings.every_seconds
            or step in (self.first_step + 1, self.total)
        )
        if due:
            log.info("%s", self.line(step, lr, now))
            self.losses, self.last_time, self.last_step = [], now, step

    def line(self, step: int, lr: float, now: float) -> str:
        done = step - self.first_step
        rate = done / max(now - self.started, 1e-9)  # this run's steps, resumed ones excluded
        left = (self.total - step) / rate if rate else float("inf")
        loss = sum(self.losses) / len(self.losses)
        window = f" (mean of {len(self.losses)})" if len(self.losses) > 1 else ""
        parts = [
            f"{self.label}: {self.unit} {step}/{self.total} ({100 * step / self.total:.1f}%)",
            f"loss {loss:.4g}{window}",
            f"lr {lr:.3g}",
            f"{rate:.3g} {self.unit}s/s",
            f"ETA {duration(left)}",
        ]
        if self.device.type == "cuda":
            import torch

            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
            parts.append(f"CUDA peak {peak:.2f} GiB")
        return ", ".join(parts)


def pass_progress(
    what: str, unit: str, done: int, total: int, processed: int, seconds: float
) -> str:
    """After a batch of a mural pass: the pass's done / total and, at this batch's speed,
    the device time its remaining work needs."""
    line = f"{what}: {done}/{total} {unit}s done ({100 * done / max(total, 1):.1f}%)"
    if processed:
        each = seconds / processed
        line += (
            f"; this batch {processed} in {seconds:.1f} s ({each:.2f} s/{unit}), "
            f"ETA {duration((total - done) * each)} at this speed on one device"
        )
    return line
