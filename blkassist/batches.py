"""Job batches of a plan: numbered items (SR tiles, refinement windows, output blocks)
grouped a fixed number to a job, in order, each job named by the range it covers.

A name by range (PREFIX-FIRST-LAST) means a marker vouches for exactly those items: after a
re-batching only jobs with other ranges run, and none mistakes another's marker for its own.
The workflow names its jobs with these when it builds the DAG; the jobs read their ranges
back from the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Batches:
    """`items` items, `per_job` to a job (the last job may take fewer)."""

    items: int
    per_job: int
    what: str = "batch"  # what a job is called in errors

    @property
    def count(self) -> int:
        return math.ceil(self.items / self.per_job)

    def range(self, job: int) -> range:
        """The items of job `job`."""
        if not 0 <= job < self.count:
            raise IndexError(f"{self.what} {job} outside a plan of {self.count}")
        first = job * self.per_job
        return range(first, min(first + self.per_job, self.items))

    def job_of(self, item: int) -> int:
        """The job that takes item `item`."""
        return item // self.per_job

    def name(self, job: int, prefix: str) -> str:
        """PREFIX-FIRST-LAST: the job named by its items (last included)."""
        items = self.range(job)
        return f"{prefix}-{items.start}-{items.stop - 1}"

    def names(self, prefix: str) -> list[str]:
        return [self.name(job, prefix) for job in range(self.count)]
