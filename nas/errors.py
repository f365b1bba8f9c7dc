"""The project's exceptions.

Two families: `NasError` is the user's to fix (bad spec, bad data, bad flags) and is shown as one clear
message with exit code 2; `InvalidArchitecture` is a sampled shape that cannot be built, which skips one
trial and never stops the search.
"""

from __future__ import annotations


class NasError(Exception):
    """A problem the user can fix. The message says what, where, what was expected and how to fix it."""

    exit_code = 2


class SpecError(NasError):
    """The YAML spec is malformed or violates the schema. `problems` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            shown = problems[:20]  # the first ones locate the mistake; a wall of text hides it
            more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
            listed = "\n".join(f"  - {p}" for p in shown)
            super().__init__(f"{path}: {len(problems)} problems in the spec:\n{listed}{more}")


class DataError(NasError):
    """A data source cannot be read or does not hold a usable image classification dataset."""


class RunDirError(NasError):
    """The run directory cannot be used (changed spec, not writable, ...)."""


class TrackingError(NasError):
    """The MLflow tracking store cannot be reached or written."""


class InvalidArchitecture(Exception):
    """A sampled architecture that cannot be built (its feature map collapses, or it is too large).

    Raised before any training; the trial is recorded as pruned with `reason` and the search goes on.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Interrupted(NasError):
    """Ctrl-C or SIGTERM: the search stopped cleanly; finished trials are kept and a rerun resumes."""

    exit_code = 130
