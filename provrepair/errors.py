"""User-facing errors.

Every error a user can cause is a ``ProvRepairError``; the CLI prints its message
(which must say what to do) without a traceback and exits with ``exit_code``.
"""


class ProvRepairError(Exception):
    """Base class of every error provrepair raises on purpose."""

    exit_code = 2


class InputError(ProvRepairError):
    """A file, array or option the user gave is unusable."""


class ModelFormatError(InputError):
    """A model file cannot be read or does not describe a supported network."""


class UnsupportedLayerError(ModelFormatError):
    """The network contains a layer provrepair cannot reason about."""


class SpecError(InputError):
    """A repair set or property is malformed or does not fit the model."""


class SolverError(ProvRepairError):
    """The LP/MILP solver cannot be used as asked."""


class SolverUnavailableError(SolverError):
    """The requested solver backend is not installed."""


class SolverLicenseError(SolverError):
    """The solver refused the problem because of its licence (e.g. size-limited Gurobi)."""
