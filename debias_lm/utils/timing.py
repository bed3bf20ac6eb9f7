"""Side-by-side timing: THE benchmark loop of the project (``debias-lm bench``, the overhead suite, the vLLM
plugin's benchmark and the eval/ scripts all time through :func:`interleaved_rounds`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    """Per-round wall seconds, process CPU seconds and return values of one configuration."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def interleaved_rounds(runs: Mapping[str, Callable[[], Any]], repeats: int, *,
                       warmup: bool | Mapping[str, Callable[[], Any]] = True, progress: bool = False,
                       desc: str = "bench") -> dict[str, Timing]:
    """THE benchmark loop: every configuration once per round, ``repeats`` rounds, so background load hits all
    of them alike (compare medians side by side, never runs made at different times).

    ``runs``: name -> a call doing the measured work (its return value is kept in ``Timing.results``);
    ``warmup``: True runs each call once untimed first, a mapping runs those calls instead, False none.
    """
    from tqdm.auto import tqdm

    if warmup:
        for fn in (warmup if isinstance(warmup, Mapping) else runs).values():
            fn()
    out = {name: Timing() for name in runs}
    for _ in tqdm(range(repeats), desc=desc, disable=not progress, leave=False):
        for name, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            res = fn()
            out[name].wall.append(time.perf_counter() - t)
            out[name].cpu.append(time.process_time() - c)
            out[name].results.append(res)
    return out


def ratios(values: Mapping[str, float], base: str) -> dict[str, float]:
    """Each value divided by the baseline's (throughput ratio vs plain: > 1 faster, < 1 slower)."""
    return {k: v / values[base] for k, v in values.items()}
