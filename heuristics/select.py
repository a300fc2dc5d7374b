"""``--layer auto``: which layers are worth trying, and in what order."""

from __future__ import annotations

import numpy as np

from provrepair.errors import InputError
from provrepair.models import affine_layers

from .analysis import predict_lp_size
from .scorers import NEEDS, SCORERS, rank

# The heuristic that benchmarks/layer_selection.py found best (see benchmarks/results/layer_selection.json).
DEFAULT_HEURISTIC = "similarity"
# Layers whose first-round LP is predicted above this many nonzeros are not candidates: on two
# cores such LPs take minutes (the MNIST MLP's 784-input layer: 512 s for 50 points).
MAX_NONZEROS = 1_500_000


def candidate_layers(net, spec, *, max_nonzeros: int = MAX_NONZEROS) -> list[int]:
    """Affine layers whose predicted LP is small enough to try."""

    keep = [k for k in range(len(affine_layers(net)))
            if predict_lp_size(net, spec, k)["nonzeros"] <= max_nonzeros]
    if not keep:
        raise InputError(f"every layer's repair LP is predicted above {max_nonzeros:,} nonzeros; repair fewer "
                         "points, or name a layer with --layer K")
    return keep


def rank_layers(net, spec, *, heuristic: str = DEFAULT_HEURISTIC, candidates: list[int] | None = None,
                pairs: np.ndarray | None = None) -> list[int]:
    """Candidate layers, best first, by ``heuristic`` (a name in ``scorers.SCORERS``)."""
    if heuristic not in SCORERS:
        raise InputError(f"unknown layer heuristic {heuristic!r}; choose one of {', '.join(SCORERS)}")
    if NEEDS.get(heuristic) == "pairs" and pairs is None:
        raise InputError(f"the {heuristic!r} heuristic needs the original inputs paired with the repair points")
    labels = spec.labels if spec.labels is not None and np.all(spec.labels >= 0) else None
    if NEEDS.get(heuristic) == "labels" and labels is None:
        raise InputError(f"the {heuristic!r} heuristic needs labelled repair points")
    candidates = candidate_layers(net, spec) if candidates is None else candidates
    scores = SCORERS[heuristic](net, spec.inputs, labels=labels, pairs=pairs)
    return rank(scores, candidates)
