"""`nas dashboard runs/<name>`: optuna-dashboard over a search's Optuna study, on 127.0.0.1.

optuna-dashboard is an extra (`pip install -e '.[dashboard]'`); without it the command says how to get it.
The server runs under the same guard as `nas ui` (nas.ui.serve): Ctrl-C or SIGTERM stop it, no orphan.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from nas.errors import NasError

PACKAGE = "optuna-dashboard==0.21.0"


def storage_of(run_dir: Path) -> str:
    """The Optuna storage URL of a search: run.json's (a --storage search), else the run dir's study.db."""
    from nas.ui import read_run_meta

    meta = read_run_meta(run_dir)
    if meta.get("storage"):
        return str(meta["storage"])
    study = Path(run_dir) / "study.db"
    if study.exists():
        return f"sqlite:///{study.resolve().as_posix()}"
    if (Path(run_dir) / "keras_tuner").exists():
        raise NasError(f"{run_dir}: a KerasTuner search has no Optuna study for optuna-dashboard; look at it with "
                       f"`nas ui {run_dir}` or `nas report {run_dir}`")
    raise NasError(f"{run_dir}: no Optuna study (study.db) in it; give the run directory of an Optuna search")


def run_dashboard(run_dir: Path, host: str, port: int, console: Any) -> None:
    from nas.ui import check_port, serve

    storage = storage_of(run_dir)
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise NasError(f"nas dashboard needs optuna-dashboard, an optional extra. Fix: pip install '{PACKAGE}' "
                       "(or pip install -e '.[dashboard]' in a checkout), then rerun")
    check_port(host, port, "nas dashboard")
    argv = [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; sys.exit(main())", storage,
            "--host", host, "--port", str(port)]

    def ready(base: str) -> None:
        console.print(f"optuna-dashboard over {storage}:\n  [bold]{base}[/]\n(Ctrl-C to stop)", soft_wrap=True)

    serve(argv, host, port, ready, probe="/", label="nas dashboard: optuna-dashboard")
    console.print("optuna-dashboard stopped")
