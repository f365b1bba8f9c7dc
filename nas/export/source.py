"""Which model to export: the run directory, its spec and data, and the chosen trial's candidate."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import NasError
from nas.rundir import RunDir
from nas.space import Candidate, DataInfo, SearchSpace
from nas.spec.loader import LoadedSpec, parse_spec


@dataclass(frozen=True)
class ExportSource:
    run: RunDir
    loaded: LoadedSpec
    trial: int
    params: dict[str, Any]
    meta: dict[str, Any]
    chosen: str = "this run dir's best trial (best/trial.json)"  # why this trial, for the manifest


def open_run(run_dir: Path) -> tuple[RunDir, LoadedSpec, dict[str, Any]]:
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise NasError(f"{run_dir}: no such run directory; pass runs/<name> of a search you ran")
    if not run.spec_copy.exists() or not run.meta.exists():
        raise NasError(f"{run_dir}: not a nas run directory (no spec.yaml / run.json); pass runs/<name>")
    meta = run.read_meta()
    text = run.spec_copy.read_text()
    spec = parse_spec(text, str(run.spec_copy))
    # Data paths in the spec are relative to the original spec file, which the run remembers.
    origin = Path(meta.get("spec_path", run.spec_copy))
    return run, LoadedSpec(spec=spec, path=origin if origin.exists() else run.spec_copy.resolve(), text=text), meta


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _shared_storage(run: RunDir, loaded: LoadedSpec, meta: dict[str, Any]) -> str | None:
    """The storage URL of a study several machines share (--storage on a database server); None for a run dir's
    own study."""
    storage = meta.get("storage")
    if not storage or storage == f"sqlite:///{run.study_db.resolve().as_posix()}" \
            or loaded.spec.search.backend != "optuna":
        return None
    return str(storage)


def _study_winner(run: RunDir, loaded: LoadedSpec, meta: dict[str, Any]) -> ExportSource | None:
    """In a shared study the winner is the study's best trial, which may have run on another machine; its params
    are in the study. None for a run dir's own study."""
    storage = _shared_storage(run, loaded, meta)
    if storage is None:
        return None
    from nas.backends.optuna_backend import study_winner

    best = study_winner(storage, meta["study_name"], loaded.spec)
    if best is None:
        return None
    where = f"on {best.user_attrs.get('nas.host', 'another machine')}"
    return ExportSource(run, loaded, best.number, dict(best.params), meta,
                        chosen=f"the best trial of the shared study {meta['study_name']!r} (trained {where}; its "
                               "model is logged to its MLflow run, under model/)")


def choose(run_dir: Path, trial: int | None) -> ExportSource:
    """The best trial (best/trial.json, or the shared study's best) or trial N (its params from leaderboard.csv,
    or from a shared study)."""
    run, loaded, meta = open_run(run_dir)
    why = f"trial {trial}, as asked (--trial)" if trial is not None else ExportSource.chosen
    rule = loaded.spec.export.select
    if trial is None and rule != "best":  # knee, or the best by a metric under conditions: from the leaderboard
        from nas.front import select
        from nas.leaderboard import frame

        every = _rows(run, loaded, meta)
        chosen, why = select(frame(every, loaded.spec.search.objectives), rule, loaded.spec.search.objectives)
        picked = next(r for r in every if int(r["trial"]) == chosen)  # its params, from where it was chosen
        params = {k.removeprefix("param."): _clean(v) for k, v in picked.items() if k.startswith("param.")}
        return ExportSource(run, loaded, chosen, params, meta, chosen=f"export.select: {why}")
    if trial is None:
        shared = _study_winner(run, loaded, meta)
        if shared is not None:
            return shared
        try:
            best = json.loads((run.best / "trial.json").read_text())
        except (OSError, ValueError):
            raise NasError(f"{run.root}: no finished trial yet, so there is no winner to export; run "
                           f"`nas search` to completion first, or pick one with --trial N") from None
        if "params" in best:
            return ExportSource(run, loaded, int(best["trial"]), dict(best["params"]), meta)
        trial = int(best["trial"])  # a run from before trial.json carried params: read the leaderboard
    import pandas as pd

    if not run.leaderboard.exists():
        raise NasError(f"{run.root}: no leaderboard.csv yet; no trial has run in this directory")
    df = pd.read_csv(run.leaderboard)
    rows = df[df["trial"] == trial]
    if rows.empty:
        known = sorted(int(t) for t in df["trial"])
        raise NasError(f"--trial {trial}: no such trial in {run.leaderboard}; known trials: "
                       f"{known[0]}..{known[-1]} ({len(known)} in all)")
    row = rows.iloc[0]
    params = {c.removeprefix("param."): _clean(row[c]) for c in df.columns if c.startswith("param.")}
    if row["state"] == "failed" or any(v is None for v in params.values()):
        raise NasError(f"--trial {trial}: that trial {row['state']} ({row.get('reason', '')}); choose a finished "
                       "or pruned trial")
    return ExportSource(run, loaded, trial, params, meta, chosen=why)


def _rows(run: RunDir, loaded: LoadedSpec, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every trial's row: from the shared study (machines' trials alike), else from leaderboard.csv."""
    storage = _shared_storage(run, loaded, meta)
    if storage is not None:
        import optuna

        from nas.backends.optuna_backend import trial_rows
        from nas.backends.storage import make_storage

        return trial_rows(optuna.load_study(study_name=meta["study_name"], storage=make_storage(storage)))
    import pandas as pd

    if not run.leaderboard.exists():
        raise NasError(f"{run.root}: no leaderboard.csv yet; no trial has run in this directory")
    return [{str(k): v for k, v in row.items()} for row in pd.read_csv(run.leaderboard).to_dict("records")]


def candidate(src: ExportSource, info: DataInfo) -> Candidate:
    # decode() casts every value to its field's type, so CSV's 16.0 for an int column is harmless
    return SearchSpace(src.loaded.spec).decode(src.params, info)


@dataclass(frozen=True)
class Retraining:
    """How `nas export` retrains the winner: for `epochs` (and `why`); `decay`: the (first, last) epochs of the
    learning-rate decay the search's endgame gave it (search.endgame), replayed so the export trains as it did."""

    epochs: int
    why: str
    decay: tuple[int, int] | None = None


def retraining(src: ExportSource) -> Retraining:
    """export.retrain_epochs if set; else train.epochs, or the trial's best epoch where the search trained it
    past them (the endgame's finalist, search.endgame), so that the export trains it as long as the search found
    it good. A finalist's decay is replayed wherever the retraining reaches it, not with export.retrain_epochs
    (a length the user chose, under the trial's own train.schedule)."""
    cfg, epochs = src.loaded.spec.export, src.loaded.spec.train.epochs
    if cfg.retrain_epochs:
        return Retraining(cfg.retrain_epochs, "export.retrain_epochs")
    try:
        best = json.loads((src.run.best / "metrics.json").read_text())
    except (OSError, ValueError):
        best = {}
    if best.get("trial") != src.trial:
        return Retraining(epochs, "train.epochs")  # another trial (--trial N): its own history is not on record
    searched, why = best.get("best_epoch"), "train.epochs"
    if isinstance(searched, (int, float)) and searched > epochs:
        epochs, why = int(searched), f"its best epoch in the search, past train.epochs {epochs}"
    span = best.get("lr_decay")
    decay = (int(span[0]), int(span[1])) if isinstance(span, list) and len(span) == 2 else None
    return Retraining(epochs, why, decay if decay and epochs > decay[0] else None)
