"""The names a user may give for a backend and an LP algorithm, importable without numpy or scipy
(the CLI builds its flags from them at start-up)."""

#: Backends, in the order ``create`` knows them.
SOLVERS = ("highs", "gurobi")
#: LP algorithms every backend accepts (each maps them to its own setting; ``auto``: the backend's choice).
METHODS = ("auto", "simplex", "ipm", "pdlp")
