"""`nas report`: one self-contained HTML page about a search, written to runs/<name>/report/index.html.

`write_report(run_dir)` takes plain inputs so the search can call it at its end; it never writes anywhere
but report/ and never takes the run directory's lock.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)


def write_report(run_dir: str | Path, *, log_to_mlflow: bool = True) -> Path:
    """Write runs/<name>/report/index.html (atomically) and log it to the search's MLflow parent run.

    NasError for a path that is not a search's run directory. An MLflow failure while logging only warns:
    the page on disk is the result.
    """
    from nas.report.data import load
    from nas.report.html import render

    data = load(Path(run_dir))
    out_dir = data.run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    page = out_dir / "index.html"
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(render(data), encoding="utf-8")
    os.replace(tmp, page)
    if log_to_mlflow and data.parent_run is not None:
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=data.meta["tracking_uri"]).log_artifact(
                data.parent_run.info.run_id, str(page), artifact_path="report")
        except Exception as e:  # noqa: BLE001 - the report on disk stands
            _log.warning("the report was written to %s but could not be logged to MLflow: %s", page, e)
    return page


def report_after_search(run_dir: str | Path, console: Any) -> Path | None:
    """The search's own call at its end: write the report; any failure only warns, the search's results stand."""
    try:
        with console.status("writing the report"):
            page = write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - never lose a search to its report
        console.print(f"[yellow]warning:[/] the report could not be written ({type(e).__name__}: {e}); "
                      f"the search's results are complete. Retry with: nas report {run_dir}", soft_wrap=True)
        return None
    console.print(f"report: {page}")
    return page
