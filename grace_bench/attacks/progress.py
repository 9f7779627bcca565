"""One progress bar for a whole attack, counted in sub-attack iterations.

pyautoattack runs each sub-attack's inner loop itself, so the bar counts the model's forward calls while a
sub-attack runs (a forward hook): roughly one per iteration (``eot`` per iteration for EOT-APGD, two for
FAB). The count is capped at the step's planned iterations and set exactly when the step ends, so the bar
moves during a long APGD run and is exact between steps. The postfix names the chunk, the sub-attack and
the robust count of the chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import nn


def planned_iterations(name: str, settings: Mapping[str, Any]) -> int:
    """Iterations a sub-attack runs on one chunk at most (restarts × iterations, × targets when targeted)."""
    s = settings
    if name == "pgd":
        return int(s.get("steps", 0))
    if name == "square":
        return int(s.get("restarts", 1)) * int(s["queries"])
    runs = int(s.get("restarts", 1)) * (int(s["targets"]) if "targets" in s else 1)
    return runs * int(s["iterations"])


def forwards_per_iteration(name: str, settings: Mapping[str, Any]) -> int:
    """Roughly how many forward calls one iteration makes."""
    if name.startswith("apgd"):
        return max(int(settings.get("eot", 1)), 1)
    if name.startswith("fab"):
        return 2
    return 1


class AttackProgress:
    """A tqdm bar over the planned iterations of every (chunk, sub-attack) step."""

    def __init__(self, total: int, *, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="it", disable=not enabled, leave=False, dynamic_ncols=True)
        self._step_done = 0

    def skip(self, units: int) -> None:
        """Advance over work already done (a resumed step)."""
        self.bar.update(units)

    def note(self, **fields: Any) -> None:
        self.bar.set_postfix(fields, refresh=False)

    @contextmanager
    def step(self, model: nn.Module, planned: int, per_iteration: int) -> Iterator[None]:
        """Count ``model``'s forward calls as iterations of one step, then settle the step at ``planned``."""
        calls = 0
        self._step_done = 0

        def hook(_module, _inputs, _output) -> None:
            nonlocal calls
            calls += 1
            done = min(calls // per_iteration, planned)
            if done > self._step_done:
                self.bar.update(done - self._step_done)
                self._step_done = done

        handle = model.register_forward_hook(hook) if isinstance(model, nn.Module) else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
        self.bar.update(planned - self._step_done)
        self._step_done = 0

    def close(self) -> None:
        self.bar.close()
