"""Multi-objective search over a `SearchSpace` (pymoo and optuna backends): see the search issue."""
