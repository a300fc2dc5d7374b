"""Write the ACAS Xu properties phi1, phi2, phi3, phi4 and phi8 as VNN-LIB files beside this script.

The definitions are those of Katz et al., "Reluplex: An Efficient SMT Solver for Verifying Deep
Neural Networks" (CAV 2017), appendix VI. Inputs are written in physical units because
``provrepair.load_model`` turns the ``.nnet`` input normalisation into the network's first layer.
The outputs are the network's own (normalised) scores, so a threshold stated in physical units
(phi1) is converted with the output scaling ``y_phys = y * output_range + output_mean`` read from
the network file; comparisons between scores need no conversion (the scaling is increasing).

Run: ``python benchmarks/acasxu/make_properties.py [--network PATH] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from provrepair import load_model
from provrepair.models import get_meta
from provrepair.specs import Box, OutputProperty, RegionSpec, write_vnnlib

HERE = Path(__file__).resolve().parent
NETWORK_NAME = "ACASXU_run2a_2_9_batch_2000.nnet"
DEFAULT_NETWORK = HERE.parents[2] / "shared" / "bench" / NETWORK_NAME

INPUTS = ("rho (ft)", "theta (rad)", "psi (rad)", "v_own (ft/s)", "v_int (ft/s)")
OUTPUTS = ("COC", "weak left", "weak right", "strong left", "strong right")
#: The published input domain; property regions are also clipped to the network's input_min/max.
DOMAIN = ((0.0, 60760.0), (-math.pi, math.pi), (-math.pi, math.pi), (100.0, 1200.0), (0.0, 1200.0))
INF = math.inf

#: name -> (published text, input bounds (None: the domain), unsafe-output kind)
PROPERTIES = {
    "prop_1": (
        (
            "phi1: If the intruder is distant and is significantly slower than the ownship, the score of a "
            "COC advisory will always be below a certain fixed threshold.\n"
            "Input: rho >= 55947.691, v_own >= 1145, v_int <= 60.\n"
            "Desired output: the score for COC is at most 1500 (physical units)."
        ),
        ((55947.691, INF), None, None, (1145.0, INF), (-INF, 60.0)),
        "coc_above_1500",
    ),
    "prop_2": (
        (
            "phi2: If the intruder is distant and is significantly slower than the ownship, the score of a "
            "COC advisory will never be maximal.\n"
            "Input: rho >= 55947.691, v_own >= 1145, v_int <= 60.\n"
            "Desired output: the score for COC is not the maximal score."
        ),
        ((55947.691, INF), None, None, (1145.0, INF), (-INF, 60.0)),
        "coc_maximal",
    ),
    "prop_3": (
        (
            "phi3: If the intruder is directly ahead and is moving towards the ownship, the score for COC "
            "will not be minimal.\n"
            "Input: 1500 <= rho <= 1800, -0.06 <= theta <= 0.06, psi >= 3.10, v_own >= 980, v_int >= 960.\n"
            "Desired output: the score for COC is not the minimal score."
        ),
        ((1500.0, 1800.0), (-0.06, 0.06), (3.10, INF), (980.0, INF), (960.0, INF)),
        "coc_minimal",
    ),
    "prop_4": (
        (
            "phi4: If the intruder is directly ahead and is moving away from the ownship but at a lower speed "
            "than that of the ownship, the score for COC will not be minimal.\n"
            "Input: 1500 <= rho <= 1800, -0.06 <= theta <= 0.06, psi = 0, v_own >= 1000, 700 <= v_int <= 800.\n"
            "Desired output: the score for COC is not the minimal score."
        ),
        ((1500.0, 1800.0), (-0.06, 0.06), (0.0, 0.0), (1000.0, INF), (700.0, 800.0)),
        "coc_minimal",
    ),
    "prop_8": (
        (
            "phi8: For a large vertical separation and a previous \"weak left\" advisory, the network will "
            "either output COC or continue advising \"weak left\".\n"
            "Input: 0 <= rho <= 60760, -pi <= theta <= -0.75 pi, -0.1 <= psi <= 0.1, 600 <= v_own <= 1200, "
            "600 <= v_int <= 1200.\n"
            "Desired output: the minimal score is that of COC or of weak left."
        ),
        ((0.0, 60760.0), (-math.pi, -0.75 * math.pi), (-0.1, 0.1), (600.0, 1200.0), (600.0, 1200.0)),
        "not_coc_or_weak_left",
    ),
}


def _rows(pairs: list[tuple[int, int]]) -> np.ndarray:
    """Rows ``y_a - y_b`` (to be ``<= 0``) for each pair ``(a, b)``."""
    G = np.zeros((len(pairs), len(OUTPUTS)))
    for r, (a, b) in enumerate(pairs):
        G[r, a], G[r, b] = 1.0, -1.0
    return G


def unsafe_outputs(kind: str, output_mean: float, output_range: float) -> OutputProperty:
    """The unsafe outputs of a property, on the network's normalised outputs."""
    if kind == "coc_above_1500":  # Y_0 >= (1500 - mean) / range
        G = np.zeros((1, len(OUTPUTS)))
        G[0, 0] = -1.0
        return OutputProperty.unsafe([(G, np.array([-(1500.0 - output_mean) / output_range]))])
    if kind == "coc_maximal":  # Y_j <= Y_0 for every j
        return OutputProperty.unsafe([(_rows([(j, 0) for j in range(1, 5)]), np.zeros(4))])
    if kind == "coc_minimal":  # Y_0 <= Y_j for every j
        return OutputProperty.unsafe([(_rows([(0, j) for j in range(1, 5)]), np.zeros(4))])
    if kind == "not_coc_or_weak_left":  # some j in {2,3,4}: Y_j <= Y_0 and Y_j <= Y_1
        return OutputProperty.unsafe([(_rows([(j, 0), (j, 1)]), np.zeros(2)) for j in (2, 3, 4)])
    raise ValueError(kind)


def input_box(bounds, input_min, input_max) -> Box:
    lo = np.array([(DOMAIN[i] if b is None else b)[0] for i, b in enumerate(bounds)])
    hi = np.array([(DOMAIN[i] if b is None else b)[1] for i, b in enumerate(bounds)])
    dom_lo = np.maximum([d[0] for d in DOMAIN], input_min)
    dom_hi = np.minimum([d[1] for d in DOMAIN], input_max)
    return Box(np.clip(lo, dom_lo, dom_hi), np.clip(hi, dom_lo, dom_hi))


def header(text: str, network: Path, extra: dict) -> str:
    mean, rng = extra["input_mean"], extra["input_range"]
    norm = ", ".join(f"X_{i}: (x - {m!r}) / {r!r}" for i, (m, r) in enumerate(zip(mean, rng)))
    return "\n".join(
        [
            f"ACAS Xu property for network N2,9 ({network.name}); Katz et al., Reluplex (CAV 2017).",
            *text.splitlines(),
            "",
            "Inputs are PHYSICAL units: " + ", ".join(f"X_{i} = {n}" for i, n in enumerate(INPUTS)) + ";",
            "the region is clipped to the published domain and to the network's input_min/input_max.",
            "provrepair's .nnet loader normalises inputs inside the network. For VNN-COMP's ONNX networks,",
            f"which take normalised inputs, normalise the bounds first: {norm}.",
            "Outputs are the network's normalised scores (the advisory is the MINIMAL score): "
            + ", ".join(f"Y_{j} = {n}" for j, n in enumerate(OUTPUTS))
            + f"; physical score = Y * {extra['output_range'][0]!r} + {extra['output_mean'][0]!r}.",
            "The assertions below describe the UNSAFE case (a counterexample to the property).",
            "Generated by benchmarks/acasxu/make_properties.py; do not edit by hand.",
        ]
    )


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", type=Path, default=DEFAULT_NETWORK, help="the N2,9 .nnet file")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for the .vnnlib files (default: beside this script)")
    args = ap.parse_args(argv)
    extra = get_meta(load_model(args.network)).extra
    output_mean, output_range = float(extra["output_mean"][0]), float(extra["output_range"][0])
    if not output_range > 0:
        raise SystemExit(f"{args.network}: output range {output_range} must be positive")
    written = []
    for name, (text, bounds, kind) in PROPERTIES.items():
        box = input_box(bounds, extra["input_min"], extra["input_max"])
        spec = RegionSpec((box,), (unsafe_outputs(kind, output_mean, output_range),))
        path = args.out / f"{name}.vnnlib"
        write_vnnlib(spec, path, header=header(text, args.network, extra))
        written.append(path)
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
