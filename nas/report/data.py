"""What a report shows, gathered read-only from a run directory (and its MLflow runs, when there are any).

Sources, in order of trust: leaderboard.csv (every backend writes it), best/metrics.json and best/arch.json,
spec.yaml, run.json (the MLflow store and parent run), export/manifest.json. Per-epoch curves and trial times
come from the MLflow trial runs; without MLflow, from the Optuna study's intermediate values. Nothing here
takes the run directory's lock or writes to it, so it can run while a search does.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nas.errors import NasError

_log = logging.getLogger(__name__)
STATES = ("finished", "pruned", "diverged", "failed", "interrupted", "running")


@dataclass
class Curve:
    trial: int
    state: str
    steps: list[int]
    values: list[float]


@dataclass
class SearchData:
    run_dir: Path
    name: str
    spec: Any | None  # nas.spec.model.Spec
    board: pd.DataFrame  # leaderboard.csv, best first (empty when no trial ran)
    meta: dict[str, Any]
    best: dict[str, Any]  # best/metrics.json
    best_arch: dict[str, Any]  # best/arch.json
    manifest: dict[str, Any] | None
    objectives: list[tuple[str, str]]  # (metric, minimize|maximize)
    curves: dict[str, list[Curve]] = field(default_factory=dict)  # metric -> one curve per trial
    times: dict[int, tuple[float, float]] = field(default_factory=dict)  # trial -> (start, end) epoch seconds
    parent_run: Any | None = None  # the MLflow parent run
    notes: list[str] = field(default_factory=list)  # what could not be read, said in the page

    @property
    def metric(self) -> str:
        return self.objectives[0][0]

    @property
    def minimize(self) -> bool:
        return self.objectives[0][1] == "minimize"

    def counts(self) -> dict[str, int]:
        if self.board.empty:
            return {s: 0 for s in STATES[:4]}
        vc = self.board["state"].value_counts()
        out = {s: int(vc.get(s, 0)) for s in STATES[:4]}
        out.update({str(s): int(n) for s, n in vc.items() if s not in out and n})
        return out

    def finished(self) -> pd.DataFrame:
        if self.board.empty:
            return self.board
        df = self.board[self.board["state"] == "finished"]
        return df[pd.to_numeric(df[self.metric], errors="coerce").notna()] if self.metric in df else df.iloc[0:0]

    def contenders(self) -> pd.DataFrame:
        """The trials that may be the winner, best first: finished ones, and paused ones (pruner asha) where the
        search lets a paused trial win (its val_accuracy less a margin for noise, nas.trial.competing_value; not
        with search.constraints or another primary metric). leaderboard.csv is already in that order
        (nas.leaderboard.frame): a 30-minute search may finish no trial and still have a winner."""
        if self.board.empty or self.metric not in self.board:
            return self.board.iloc[0:0]
        can_pause = self.metric == "val_accuracy" and "feasible" not in self.board
        states = ["finished", "paused"] if can_pause else ["finished"]
        df = self.board[self.board["state"].isin(states)]
        return df[pd.to_numeric(df[self.metric], errors="coerce").notna()]

    def param_columns(self) -> list[str]:
        return [c for c in self.board.columns if c.startswith("param.")]


def _json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def load(run_dir: Path, with_mlflow: bool = True, with_curves: bool = True) -> SearchData:
    """Everything the report and `nas status` show. NasError when `run_dir` is not a search's run directory.
    `with_curves=False` reads files only (no MLflow, no Optuna storage): what `nas status` needs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NasError(f"{run_dir}: no such run directory; give one made by `nas search`, e.g. runs/<name>")
    if not (run_dir / "spec.yaml").exists() and not (run_dir / "run.json").exists():
        raise NasError(f"{run_dir}: not a search's run directory (no spec.yaml or run.json in it); give one made "
                       "by `nas search`, e.g. runs/<name>")
    notes: list[str] = []
    spec = None
    try:
        from nas.spec.loader import parse_spec

        spec = parse_spec((run_dir / "spec.yaml").read_text(), str(run_dir / "spec.yaml"))
    except Exception as e:  # an old or hand-edited copy: the page still shows what the files hold
        notes.append(f"spec.yaml could not be read ({str(e).splitlines()[0][:200]})")
    objectives: list[tuple[str, str]] = ([(str(o.metric), o.resolved_direction) for o in spec.search.objectives]
                                         if spec else [("val_accuracy", "maximize")])
    try:
        board = pd.read_csv(run_dir / "leaderboard.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        board = pd.DataFrame(columns=["trial", "state", "reason"])
    if "reason" in board:
        board["reason"] = board["reason"].fillna("").astype(str)
    manifest = _json(run_dir / "export" / "manifest.json") or None
    data = SearchData(run_dir=run_dir, name=spec.name if spec else run_dir.name, spec=spec, board=board,
                      meta=_json(run_dir / "run.json"), best=_json(run_dir / "best" / "metrics.json"),
                      best_arch=_json(run_dir / "best" / "arch.json"), manifest=manifest, objectives=objectives,
                      notes=notes)
    if not with_curves:
        return data
    if with_mlflow and data.meta.get("mlflow_parent_run_id") and data.meta.get("tracking_uri"):
        try:
            _from_mlflow(data)
        except Exception as e:  # a store that moved or is down: the report says so and goes on
            data.notes.append(f"MLflow store {data.meta['tracking_uri']} could not be read ({str(e)[:200]}); "
                              "learning curves and trial times come from the run directory alone")
    if not data.curves:
        _from_optuna(data)
    return data


def _from_mlflow(data: SearchData) -> None:
    from mlflow.tracking import MlflowClient

    uri, parent_id = data.meta["tracking_uri"], data.meta["mlflow_parent_run_id"]
    if uri.startswith("sqlite:"):
        from nas.tracking import _sqlite_path

        db = _sqlite_path(uri)
        if db is not None and not db.exists():
            raise FileNotFoundError(f"{db} does not exist")
    client = MlflowClient(tracking_uri=uri)
    data.parent_run = client.get_run(parent_id)
    exp = data.parent_run.info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000)
    states = dict(zip(data.board["trial"], data.board["state"], strict=False)) if not data.board.empty else {}
    latest: dict[int, Any] = {}
    for run in runs:  # a re-run trial number keeps its latest run
        try:
            n = int(run.data.tags.get("nas.trial", ""))
        except ValueError:
            continue
        if n not in latest or run.info.start_time > latest[n].info.start_time:
            latest[n] = run
    metrics = [m for m, _ in data.objectives] + ["val_accuracy", "accuracy", "val_loss", "loss"]
    for n, run in sorted(latest.items()):
        if run.info.end_time:
            data.times[n] = (run.info.start_time / 1000, run.info.end_time / 1000)
        state = str(states.get(n, run.data.tags.get("nas.state", "")))
        for metric in dict.fromkeys(metrics):
            if metric not in run.data.metrics:
                continue
            hist = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
            if hist:
                data.curves.setdefault(metric, []).append(
                    Curve(n, state, [m.step for m in hist], [float(m.value) for m in hist]))


def _from_optuna(data: SearchData) -> None:
    study_db = data.run_dir / "study.db"
    if not study_db.exists():
        return
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        storage = optuna.storages.RDBStorage(f"sqlite:///{study_db.resolve().as_posix()}",
                                             skip_compatibility_check=True)
        names = optuna.get_all_study_names(storage)
        if not names:
            return
        study = optuna.load_study(study_name=names[0], storage=storage)
        states = dict(zip(data.board["trial"], data.board["state"], strict=False)) if not data.board.empty else {}
        for t in study.get_trials(deepcopy=False):
            if t.datetime_start and t.datetime_complete:
                data.times.setdefault(t.number, (t.datetime_start.timestamp(), t.datetime_complete.timestamp()))
            if t.intermediate_values:
                steps = sorted(t.intermediate_values)
                data.curves.setdefault(data.metric, []).append(
                    Curve(t.number, str(states.get(t.number, "")), steps, [t.intermediate_values[s] for s in steps]))
    except Exception as e:
        data.notes.append(f"the Optuna study in {study_db} could not be read ({str(e)[:200]})")


def importances(data: SearchData) -> dict[str, float]:
    """Optuna's importance evaluator (fANOVA) over the finished trials, from the leaderboard (any backend)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    done = data.finished()
    if len(done) < 3:
        return {}
    dists: dict[str, Any] = {}
    for col in data.param_columns():
        values = done[col].dropna()
        if values.nunique() < 2 or len(values) < len(done):  # fixed, or absent in shallower models
            continue
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            dists[col.removeprefix("param.")] = FloatDistribution(float(values.min()), float(values.max()))
        else:
            dists[col.removeprefix("param.")] = CategoricalDistribution(sorted(values.astype(str).unique()))
    if not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="minimize" if data.minimize else "maximize")
    for _, row in done.iterrows():
        params = {k: (float(row[f"param.{k}"]) if isinstance(d, FloatDistribution) else str(row[f"param.{k}"]))
                  for k, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[data.metric])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def pareto(data: SearchData) -> pd.DataFrame:
    """Finished trials not dominated on every objective (with two or more objectives)."""
    done = data.finished()
    metrics = [m for m, _ in data.objectives]
    if len(metrics) < 2 or done.empty or not set(metrics) <= set(done.columns):
        return done.iloc[0:0]
    signs = [-1.0 if d == "maximize" else 1.0 for _, d in data.objectives]
    pts = [[s * float(v) for s, v in zip(signs, row, strict=False)] for row in done[metrics].to_numpy()]
    def dominates(q: list[float], p: list[float]) -> bool:
        return all(a <= b for a, b in zip(q, p, strict=True)) and any(a < b for a, b in zip(q, p, strict=True))

    keep = [i for i, p in enumerate(pts) if not any(dominates(q, p) for q in pts)]
    return done.iloc[keep]


def blocks(arch: Any) -> list[dict[str, Any]]:
    """The drawing of an architecture: one dict per block (and the head) with its output shape and parameters."""
    import dataclasses

    from nas.arch import plan

    def body(n: int) -> tuple[int, tuple[int, int, int]]:  # params of the first n blocks, shape after them
        p = plan(dataclasses.replace(arch, blocks=arch.blocks[:n], head_type="gap", head_depth=0, num_classes=1))
        return p.params - (p.feature_shape[2] + 1), p.feature_shape

    out = []
    prev, _ = body(0)
    for i, b in enumerate(arch.blocks, start=1):
        params, shape = body(i)
        k = f"{b.kernel_size}x{b.kernel_size}"
        layers = [f"{b.convs} x Conv {k}" + (f" /{b.strides}" if b.strides > 1 else "") + f", {b.filters} filters",
                  *(["BatchNorm"] if arch.batch_norm else []), arch.activation,
                  *([f"{b.pooling} pool 2x2"] if b.pooling != "none" else []),
                  *([f"dropout {b.dropout:g}"] if b.dropout else [])]
        out.append({"name": f"block {i}", "layers": layers, "shape": shape, "params": params - prev})
        prev = params
    total = plan(arch)
    head = [("global average pool" if arch.head_type == "gap" else "flatten"),
            *[f"dense {arch.head_width}, {arch.activation}" for _ in range(arch.head_depth)],
            *([f"dropout {arch.head_dropout:g}"] if arch.head_dropout else []), f"dense {arch.num_classes}, softmax"]
    out.append({"name": "head", "layers": head, "shape": (arch.num_classes,), "params": total.params - prev})
    return out


def trial_arch(data: SearchData, row: pd.Series) -> Any:
    """The ArchConfig of a leaderboard row: best/arch.json for the best trial, else decoded from its params."""
    from nas.arch import ArchConfig

    if data.best_arch and int(row["trial"]) == int(data.best.get("trial", -1)):
        return ArchConfig.from_dict(dict(data.best_arch))
    if data.spec is None or not data.best_arch:
        raise ValueError("needs spec.yaml and best/arch.json (input shape, classes)")
    from nas.space import DataInfo, SearchSpace

    a = data.best_arch
    info = DataInfo(tuple(a["input_shape"]), int(a["num_classes"]), float(a.get("pixel_max", 255.0)),
                    tuple(a.get("class_names", ())))
    params = {}
    for col in data.param_columns():
        v = row[col]
        if isinstance(v, float) and math.isnan(v):
            continue
        params[col.removeprefix("param.")] = int(v) if isinstance(v, float) and v.is_integer() else v
    return SearchSpace(data.spec).decode(params, info).arch
