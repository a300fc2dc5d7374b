"""The one interface every repairer implements, and the one result every repairer returns.

A repairer is an object with a ``name``, a ``kind`` (``provable``, ``statistical`` or
``pipeline``), an ``Options`` dataclass (its typed options, see :mod:`provrepair.repair.options`)
and ``run(model, target, options, progress=None) -> RepairResult``. ``target`` is what the repair
must achieve: a :class:`~provrepair.specs.PointSpec` or :class:`~provrepair.specs.RegionSpec` for
the provable repairers and pipelines, the training task for the statistical ones. The API, the
CLI and the comparison harness call nothing else, so adding a repairer is one module and one line
in :mod:`provrepair.repair.registry`.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

from ..version import version

if TYPE_CHECKING:
    from torch import nn

__all__ = ["RepairResult", "Repairer", "Progress", "CERTIFIED", "NOT_CERTIFIED", "INFEASIBLE", "TIME_LIMIT",
           "ERROR", "TRAINED", "KINDS", "say"]

# Outcome names, also the CLI's exit-code keys.
CERTIFIED = "certified"  # a model, and an independent certificate that it meets the whole target
NOT_CERTIFIED = "not_certified"  # a model, but the independent check failed
INFEASIBLE = "infeasible"
TIME_LIMIT = "time_limit"
ERROR = "error"
TRAINED = "trained"  # a statistical repairer's model: measured, not certified

KINDS = ("provable", "statistical", "pipeline")

#: Progress messages go to a callback (or nowhere, with ``None``). Statistical repairers also show
#: their training bars only when one is given.
Progress = Callable[[str], None]


def say(progress: Progress | None) -> Progress:
    """A callable that forwards to ``progress`` or does nothing."""
    return progress if callable(progress) else (lambda msg: None)


@dataclass
class RepairResult:
    """What every repairer returns.

    ``status``: one of the outcome names above. ``model``: the repaired network (None when the
    repair found none). ``certificate``: the independent check of ``model`` on the target (points or
    regions), None where none was made; ``before``: the same check of the input model, where the
    repairer made one (the polish does). ``metrics`` / ``pretrained``: a statistical repairer's test
    metrics of the repaired and the input model; ``training``: its model selection. ``lp`` / ``solver``
    / ``delta``: the LP's size and rounds, the solver record (name, version, status, options,
    objective), the norms of the parameter change. ``details``: what is particular to the method.
    ``message``: a human-readable account, printed by :meth:`summary`.
    """

    status: str
    model: nn.Module | None
    method: str = ""
    message: str = ""
    certificate: Any = None
    before: Any = None
    layer: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    pretrained: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    lp: dict[str, Any] = field(default_factory=dict)
    solver: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)  # seconds; "total" always
    delta: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    layer_selection: dict[str, Any] | None = None  # with layer="auto": heuristic, ranking, layers tried

    @property
    def certified(self) -> bool:
        return self.status == CERTIFIED

    @property
    def after(self) -> Any:
        """The certificate of the repaired model (the polish's name for it)."""
        return self.certificate

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record: every field but the model; certificates as their own dicts."""

        def cert(c: Any) -> dict[str, Any] | None:
            return c.to_dict() if c is not None else None

        return {"provrepair": version(), "method": self.method, "status": self.status, "certified": self.certified, "layer": self.layer,
                "message": self.message, "certificate": cert(self.certificate), "before": cert(self.before),
                "metrics": self.metrics, "pretrained": self.pretrained, "training": self.training,
                "details": self.details, "lp": self.lp, "solver": self.solver,
                "timings": self.timings, "delta": self.delta,
                "options": self.options, "layer_selection": self.layer_selection}

    def summary(self) -> str:
        return self.message or f"{self.method}: {self.status}"


class Repairer(Protocol):
    """What the registry holds for each method (see the module docstring)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Options: ClassVar[type]

    def run(self, model: Any, target: Any, options: Any, progress: Progress | None = None) -> RepairResult:
        ...
