"""The run directory `runs/<name>/`: layout, the changed-spec rule, and writing `best/`."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import RunDirError
from nas.spec.loader import LoadedSpec


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def study_db(self) -> Path:
        return self.root / "study.db"

    @property
    def spec_copy(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def meta(self) -> Path:
        return self.root / "run.json"

    @property
    def leaderboard(self) -> Path:
        return self.root / "leaderboard.csv"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def pending(self) -> Path:
        """Models of trials still being judged; the best is moved to best/, the rest deleted."""
        return self.root / ".pending"

    def read_meta(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.meta.read_text()))
        except (OSError, ValueError):
            return {}

    def write_meta(self, **updates: Any) -> None:
        meta = {**self.read_meta(), **updates}
        atomic_write(self.meta, json.dumps(meta, indent=2, sort_keys=True))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _changed_keys(old_text: str, new: LoadedSpec) -> list[str]:
    """Dotted keys whose values differ between the spec a run started with and the new one."""
    from nas.spec.loader import flat_keys, parse_spec

    try:
        a = flat_keys(parse_spec(old_text, "spec.yaml"))
    except Exception:
        return ["(the old spec no longer parses)"]
    b = flat_keys(new.spec)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def prepare(runs_dir: Path, loaded: LoadedSpec, *, new: bool) -> tuple[RunDir, bool]:
    """Create or reopen `runs_dir/<name>`. Returns (run dir, resuming?).

    A directory made by a different spec is refused (never silently reused, never overwritten): with
    `new`, it is moved aside to `<name>.<timestamp>` and a fresh one started.
    """
    run = RunDir(runs_dir / loaded.spec.name)
    blocker = next((p for p in run.root.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RunDirError(f"{run.root}: cannot create the run directory: {blocker} is a file, not a folder; "
                          "choose another place with --runs-dir")
    try:
        run.root.parent.mkdir(parents=True, exist_ok=True)
        existing = run.meta.exists()
        if existing:
            old_hash = run.read_meta().get("spec_hash")
            if new:
                aside = run.root.with_name(f"{run.root.name}.{time.strftime('%Y%m%d-%H%M%S')}")
                run.root.rename(aside)
                existing = False
            elif old_hash != loaded.hash:
                old_text = run.spec_copy.read_text() if run.spec_copy.exists() else ""
                keys = _changed_keys(old_text, loaded)
                shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
                raise RunDirError(
                    f"{run.root}: this run directory was created by a different spec "
                    f"(changed: {shown}). Resuming would mix two searches. Either rerun with --new "
                    f"(the old run is kept as {run.root.name}.<timestamp>), or give the spec another `name:`."
                )
        run.root.mkdir(parents=True, exist_ok=True)
        probe = run.root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except PermissionError as exc:
        raise RunDirError(
            f"{run.root}: cannot write the run directory ({exc.strerror}); choose a writable place with --runs-dir"
        ) from None
    except OSError as exc:
        raise RunDirError(f"{run.root}: cannot use the run directory ({exc}); choose another with --runs-dir") from None
    if existing:
        recover_best(run)
    else:
        atomic_write(run.spec_copy, loaded.text)
        run.write_meta(spec_hash=loaded.hash, spec_path=str(loaded.path), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run, existing


def promote_best(run: RunDir, model_path: Path, arch_json: str, trial: dict[str, Any]) -> None:
    """Make a trial's model the current best. best/ is swapped as a whole (model, arch.json, trial.json
    from one trial, never a mix), via best.new/ -> best/; `recover_best` finishes a swap a kill interrupted."""
    new, old = run.root / "best.new", run.root / "best.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    os.replace(model_path, new / "model.keras")
    (new / "arch.json").write_text(arch_json, encoding="utf-8")
    (new / "trial.json").write_text(json.dumps(trial, indent=2, sort_keys=True, default=str), encoding="utf-8")
    if run.best.exists():
        os.replace(run.best, old)
    os.replace(new, run.best)
    shutil.rmtree(old, ignore_errors=True)


def recover_best(run: RunDir) -> None:
    new, old = run.root / "best.new", run.root / "best.old"
    if not run.best.exists() and (new / "trial.json").exists():
        os.replace(new, run.best)  # killed between the two renames: the new best was complete
    elif not run.best.exists() and old.exists():
        os.replace(old, run.best)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def clear_pending(run: RunDir) -> None:
    shutil.rmtree(run.pending, ignore_errors=True)
