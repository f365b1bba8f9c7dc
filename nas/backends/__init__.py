"""Search backends: each owns the sampling loop and calls the shared `TrialObjective` for every trial."""
