"""``--layer auto``: which layers are worth trying, and in what order."""

from __future__ import annotations

import numpy as np

from provrepair.errors import InputError
from provrepair.models import affine_layers

from .analysis import estimate_seconds, predict_lp_size
from .predict import (
    ProbeFn,
    linear_drawdowns,
    order_by_prediction,
    predict_drawdowns,
    reference_inputs,
)
from .scorers import NEEDS, SCORERS, rank

#: ``linear``: the drawdown of a least-change repair of the network linearised at the repair points,
#: measured on reference inputs (``predict.linear_drawdowns``; seconds, no LP). ``probe``: a small LP
#: repair at every candidate, measured the same way (``predict.predict_drawdowns``; it needs the
#: repair function, so ``rank_by_prediction`` runs both, not ``rank_layers``).
LINEAR = "linear"
PROBE = "probe"
PREDICTORS = (LINEAR, PROBE)
#: Every name ``--heuristic`` takes: the predictors and the scorers (the paper's and ours).
HEURISTICS = (*PREDICTORS, *SCORERS)
# The heuristic that benchmarks/layer_selection.py found best (see benchmarks/results/layer_selection.json):
# on its 20 tasks (>= 3 certified candidates, >= 1 pp apart) similarity picks within 0.5 pp of the
# brute-force best on 65 % (mean regret 0.39 pp, 0.43x brute force's time), linear on 55 % (0.53 pp,
# 0.40x): neither reaches 80 %; the better pick wins.
DEFAULT_HEURISTIC = "similarity"
#: What the predictors fall back to where no reference inputs fit the model.
FALLBACK_HEURISTIC = "similarity"
#: The first affine layer's repair takes several times what ``estimate_seconds`` says (every pattern
#: of the network follows it): zoo MNIST MLP, 10 fog points, predicted 22 s whole, 9.6 s with 50 rows
#: and 4.4 s with 25 rows, measured out of 60 s, out of 40 s and 18 s; its first conv predicted 31 s,
#: out of 60 s (benchmarks/layer_selection.py, 2 busy cores). Its prediction is multiplied by this.
FIRST_LAYER_FACTOR = 8.0
#: ``--layer auto`` first gives each candidate this multiple of its predicted seconds (at least
#: ``ATTEMPT_MIN_SECONDS``); where none certifies so, the ranking is retried with the budget left.
ATTEMPT_FACTOR = 3.0
ATTEMPT_MIN_SECONDS = 10.0
#: Without a time limit, ``--layer auto`` tries the layers whose repair is predicted to take at most
#: this many seconds (``analysis.estimate_seconds``, calibrated by benchmarks/point_repair.py).
DEFAULT_BUDGET_SECONDS = 300.0
#: A layer too slow whole may still be tried with a subset of its rows: at least this share of them.
MIN_ROW_SHARE = 0.125
#: Kept for callers that still filter by size (``candidate_layers(max_nonzeros=...)``).
MAX_NONZEROS = 1_500_000


def candidate_plan(net, spec, *, time_limit: float | None = None) -> list[dict]:
    """Per affine layer that fits ``time_limit`` (default ``DEFAULT_BUDGET_SECONDS``): its predicted
    seconds and ``rows``: None (the whole layer) or how many rows of ``W_k`` to repair so that it
    fits (halving from all down to ``MIN_ROW_SHARE`` of them; which rows: ``pick_rows``)."""
    budget = DEFAULT_BUDGET_SECONDS if time_limit is None else float(time_limit)
    plan = []
    for k in range(len(affine_layers(net))):
        n_rows = int(net[affine_layers(net)[k]].weight.shape[0])
        rows, count = None, n_rows
        while True:
            secs = estimate_seconds(predict_lp_size(net, spec, k, rows=rows, formulation="auto"))
            secs *= FIRST_LAYER_FACTOR if k == 0 else 1.0
            if secs <= budget:
                plan.append({"layer": k, "rows": rows, "seconds": secs})
                break
            count //= 2
            if count < max(1, int(np.ceil(MIN_ROW_SHARE * n_rows))):
                break
            rows = count
    return plan


def candidate_layers(net, spec, *, time_limit: float | None = None, max_nonzeros: int | None = None) -> list[int]:
    """Affine layers worth trying: predicted to finish within ``time_limit`` (whole or with a row
    subset; see ``candidate_plan``), or, given ``max_nonzeros``, predicted that small whole."""
    if max_nonzeros is not None:
        keep = [k for k in range(len(affine_layers(net)))
                if predict_lp_size(net, spec, k)["nonzeros"] <= max_nonzeros]
        what = f"above {max_nonzeros:,} nonzeros"
    else:
        keep = [c["layer"] for c in candidate_plan(net, spec, time_limit=time_limit)]
        limit = DEFAULT_BUDGET_SECONDS if time_limit is None else time_limit
        what = f"to take more than {limit:g} s even with {MIN_ROW_SHARE:.0%} of its rows"
    if not keep:
        raise InputError(f"every layer's repair LP is predicted {what}; repair fewer points, raise --time-limit, "
                         "or name a layer with --layer K")
    return keep


def pick_rows(net, spec, layer: int, count: int) -> tuple[int, ...]:
    """The ``count`` rows (output neurons/channels) of affine ``layer`` with the largest mean
    activation magnitude over the repair points: the units that carry these inputs."""
    import torch

    from provrepair.models import affine_index_to_module_index

    mi = affine_index_to_module_index(net, layer)
    with torch.no_grad():
        x = torch.as_tensor(np.array(spec.inputs), dtype=torch.float32)
        out = net[:mi + 1](x)
    mag = out.abs().reshape(out.shape[0], out.shape[1], -1).mean(dim=(0, 2)).numpy()
    return tuple(sorted(int(i) for i in np.argsort(-mag, kind="stable")[:count]))


def rank_layers(net, spec, *, heuristic: str = DEFAULT_HEURISTIC, candidates: list[int] | None = None,
                pairs: np.ndarray | None = None, time_limit: float | None = None) -> list[int]:
    """Candidate layers, best first, by ``heuristic`` (a name in ``scorers.SCORERS``; the drawdown
    predictors rank through ``rank_by_prediction``)."""
    if heuristic in PREDICTORS:
        raise InputError(f"the {heuristic} heuristic predicts drawdowns; rank with rank_by_prediction")
    if heuristic not in SCORERS:
        raise InputError(f"unknown layer heuristic {heuristic!r}; choose one of {', '.join(HEURISTICS)}")
    if NEEDS.get(heuristic) == "pairs" and pairs is None:
        raise InputError(f"the {heuristic!r} heuristic needs the original inputs paired with the repair points")
    labels = spec.labels if spec.labels is not None and np.all(spec.labels >= 0) else None
    if NEEDS.get(heuristic) == "labels" and labels is None:
        raise InputError(f"the {heuristic!r} heuristic needs labelled repair points")
    candidates = candidate_layers(net, spec, time_limit=time_limit) if candidates is None else candidates
    scores = SCORERS[heuristic](net, spec.inputs, labels=labels, pairs=pairs)
    return rank(scores, candidates)


def attempt_seconds(predicted_seconds: float) -> float:
    """How long ``--layer auto`` first lets a candidate predicted at ``predicted_seconds`` run."""
    return max(ATTEMPT_MIN_SECONDS, ATTEMPT_FACTOR * float(predicted_seconds))


def rank_by_prediction(net, spec, plan: list[dict], *, heuristic: str = LINEAR, input_shape: tuple | None,
                       probe_fn: ProbeFn | None = None, reference: tuple | None = None
                       ) -> tuple[list[int], dict]:
    """The layers of ``plan`` ordered by the drawdown ``heuristic`` (``linear`` or ``probe``, which
    needs ``probe_fn``) predicts on reference inputs, and what was measured: ``{"ranked_by",
    "reference", "predictions"}``. Without reference inputs (none given and no shipped dataset fits
    the model) the ``FALLBACK_HEURISTIC`` ranks them."""
    name = "given"
    if reference is None:
        found = reference_inputs(net, input_shape)
        reference, name = (None, None) if found is None else (found[:2], found[2])
    layers = [c["layer"] for c in plan]
    if reference is None:
        return (rank_layers(net, spec, heuristic=FALLBACK_HEURISTIC, candidates=layers),
                {"ranked_by": FALLBACK_HEURISTIC, "reference": None})
    labels = spec.labels if spec.labels is not None and np.all(spec.labels >= 0) else None
    if heuristic == PROBE:
        if probe_fn is None:
            raise InputError("the probe heuristic needs the repair function (probe_fn)")
        preds = predict_drawdowns(probe_fn, net, plan, labels, spec.n_points, reference)
    else:
        preds = linear_drawdowns(net, spec, plan, reference, lambda k, count: pick_rows(net, spec, k, count))
    return order_by_prediction(preds), {"ranked_by": heuristic, "reference": name, "predictions": preds}
