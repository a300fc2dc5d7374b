"""One definition of the parameter-change norms, and the region repairer's use of
``OutputProperty.is_conjunctive`` (a disjunct without rows is refused before any LP)."""

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.errors import SpecError
from provrepair.repair.aprnn import delta_norms
from provrepair.repair.polytope import repair_polytopes
from provrepair.specs import Box, OutputProperty


def test_delta_norms_counts_what_the_repair_may_touch():
    d = np.array([0.5, -2.0, 0.0, 1e-12])
    assert delta_norms(d) == {"linf": 2.0, "l1": 2.5 + 1e-12, "l0": 2, "count": 4}
    assert delta_norms(d, 10)["count"] == 10
    assert delta_norms(np.zeros(0)) == {"linf": 0.0, "l1": 0.0, "l0": 0, "count": 0}


def test_a_disjunct_without_rows_is_refused_before_any_lp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    prop = OutputProperty.unsafe([(np.zeros((0, 2)), np.zeros(0))])
    assert not prop.is_conjunctive
    box = Box(np.zeros(2), np.ones(2))
    with pytest.raises(SpecError, match="without rows"):
        repair_polytopes(net, [box], [prop], 1)
