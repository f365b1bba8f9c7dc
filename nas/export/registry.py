"""Log an export on the search's MLflow parent run and register the chosen artifact in the Model Registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.errors import NasError
from nas.export.source import ExportSource


class ExportTrackingError(NasError):
    """MLflow (tracking or registry) failed after the export was complete on disk."""

    def __init__(self, message: str, uri: str, cause: str):
        super().__init__(message)
        self.uri, self.cause = uri, cause


def log_and_register(src: ExportSource, out: Path, manifest: dict[str, Any], registry: str | None) -> dict[str, Any]:
    """Log `out/` (manifest.json included) under export/ on the search's parent run, and register `registry`.

    Any MLflow failure is an ExportTrackingError that says the export on disk is complete and what to do."""
    parent, uri = src.meta.get("mlflow_parent_run_id"), src.meta.get("tracking_uri")
    if not parent or not uri or not src.loaded.spec.tracking.enabled:
        return {"logged": False, "reason": "tracking was disabled for this search"}
    from mlflow.exceptions import MlflowException

    try:
        return _log_and_register(src, out, manifest, registry, parent, uri)
    except (MlflowException, NasError, OSError) as exc:  # requests' errors are OSErrors; TrackingError a NasError
        cause = " ".join(str(exc).split())[:500] or type(exc).__name__
        raise ExportTrackingError(
            f"{out}/ holds the complete export (manifest.json included), but logging it to MLflow at {uri!r} "
            f"(parent run {parent}) failed: {cause}. Make that store reachable and writable (a server: is it "
            f"running? a SQLite file: is it the search's mlflow.db?), then rerun `nas export {src.run.root}` to "
            "log and register it; the files on disk can be used as they are.", uri, cause) from None


def _log_and_register(src: ExportSource, out: Path, manifest: dict[str, Any], registry: str | None, parent: str,
                      uri: str) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from nas.tracking import check_tracking_uri

    check_tracking_uri(uri)
    client = MlflowClient(uri)
    client.log_artifacts(parent, str(out), artifact_path="export")
    metrics = {f"export.{name}.test_accuracy": a["test_accuracy"] for name, a in manifest["artifacts"].items()
               if a.get("status") == "ok"}
    metrics["export.sparsity"] = float(manifest["sparsity"]["overall"])
    for key, value in metrics.items():
        client.log_metric(parent, key, float(value))
    result: dict[str, Any] = {"logged": True, "tracking_uri": uri, "run_id": parent, "artifact_path": "export"}
    art = manifest["artifacts"].get(registry or "")
    if registry and art and art["status"] == "ok":
        name = src.loaded.spec.name
        try:
            client.create_registered_model(name, description=f"nas exports of search {name!r}")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(
            name, source=f"runs:/{parent}/export/{art['path']}", run_id=parent,
            tags={"format": registry, "trial": str(src.trial), "sha256": art["sha256"],
                  "test_accuracy": f"{art['test_accuracy']:.4f}", "sparsity": str(manifest["sparsity"]["overall"])},
            description=manifest["source"]["model"],
        )
        result["registered"] = {"name": name, "version": int(version.version), "format": registry}
    return result
