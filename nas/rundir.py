"""The run directory `runs/<name>/`: layout, the changed-spec rule, and writing `best/`."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import RunDirError
from nas.spec.loader import LoadedSpec

if TYPE_CHECKING:
    from nas.data.splits import Split


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
    def lock_file(self) -> Path:
        return self.root / ".lock"

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
            holder = _holder(run)
            if holder:  # never resume, or move aside, a run dir another search (or an export) is using
                raise RunDirError(_busy(run, *holder))
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
        if not run.read_meta().get("uid"):  # made before run dirs had one
            run.write_meta(uid=uuid.uuid4().hex)
    else:
        atomic_write(run.spec_copy, loaded.text)
        run.write_meta(spec_hash=loaded.hash, spec_path=str(loaded.path), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                       uid=uuid.uuid4().hex)
    return run, existing


class RunLock:
    """An exclusive lock on runs/<name>/.lock, held by one `nas search` (or `nas export`) from start to end.

    The kernel drops a flock when its process dies, however it dies (kill -9 included), so holding it proves
    that every earlier search in this run dir has ended: work they left marked "running" is known dead
    (`held`). Where locks are unavailable (no fcntl, a file system without locks) nothing is proven and
    `held` is False: a resume then waits for Optuna's heartbeat instead.
    """

    def __init__(self, fd: int | None):
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim(run: RunDir, command: str = "search") -> RunLock:
    """Take the run dir's lock for this process (`command`: "search" or "export", for the messages of whoever
    is refused), or refuse when a live search or export holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        return RunLock(None)
    try:
        fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the worker (PEP 446)
    except OSError:  # a read-only run dir (export --out elsewhere) or none at all: callers report that themselves
        return RunLock(None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(_busy(run, *(_holder(run) or ("?", "search")), wanted=command)) from None
    except OSError:
        os.close(fd)
        return RunLock(None)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{command}\n".encode())
    return RunLock(fd)


def claim_for_export(run: RunDir) -> RunLock:
    """The lock for `nas export`: refused while a search runs in the run dir (it may swap best/ under the
    export). A search that exports its own winner (export.after_search) already holds it: nothing to take."""
    if _lock_holder(run) == str(os.getpid()):
        return RunLock(None)
    return claim(run, "export")


def _holder(run: RunDir) -> tuple[str, str] | None:
    """(pid, "search" or "export") written by the live process holding the lock, or None when none holds it."""
    try:
        import fcntl

        fd = os.open(run.lock_file, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        lines = os.read(fd, 64).decode(errors="replace").split()
        return (lines[0] if lines else "?"), (lines[1] if len(lines) > 1 else "search")
    except OSError:
        return None
    finally:
        os.close(fd)


def _lock_holder(run: RunDir) -> str | None:
    """The pid written by the live search or export holding the lock, or None when none holds it."""
    held = _holder(run)
    return held[0] if held else None


def _busy(run: RunDir, pid: str, holder: str = "search", wanted: str = "search") -> str:
    if holder == "export":
        return (f"{run.root}: `nas export` (pid {pid}) is using this run directory; "
                + ("a search now could replace best/ while it reads it. Wait for the export to finish, then rerun"
                   if wanted == "search" else "two exports at once would overwrite each other's files. Wait for it "
                   f"to finish, then rerun `nas export {run.root}`"))
    if wanted == "export":
        return (f"{run.root}: a `nas search` (pid {pid}) is running in this run directory and may replace best/ "
                f"while the export reads it. Wait for the search to finish (or stop it with Ctrl-C), then rerun "
                f"`nas export {run.root}`")
    return (f"{run.root}: another `nas search` (pid {pid}) is running in this run directory; two at once would mix "
            "their trials. Wait for it to finish, or stop it (Ctrl-C) and rerun")


def remember_test_split(run: RunDir, test: Split, source: str) -> str:
    """Record the test split's fingerprint in run.json and return it, or refuse a resume whose data gives
    another one: its trials would be compared with the finished ones on a different test set. A run from
    before fingerprints were recorded has none: it is accepted and this one recorded."""
    from nas.data.splits import fingerprint as fingerprint_of

    fingerprint = fingerprint_of(test)
    recorded = run.read_meta().get("test_fingerprint")
    if recorded and recorded != fingerprint:
        raise RunDirError(
            f"{run.meta}: test_fingerprint {recorded} was recorded when this search started, but data.source "
            f"{source!r} now gives a test split with fingerprint {fingerprint}: the data changed since, so this "
            "search's results would no longer share one test set. Restore the original data to resume, or rerun "
            f"with --new to start a fresh search on the new data (the old run is kept as {run.root.name}.<timestamp>)")
    if recorded != fingerprint:
        run.write_meta(test_fingerprint=fingerprint)
    return fingerprint


def promote_best(run: RunDir, model_path: Path, arch_json: str, trial: dict[str, Any]) -> None:
    """Make a trial's model the current best. best/ is swapped as a whole (model, arch.json, trial.json
    from one trial, never a mix), via best.new/ -> best/; `recover_best` finishes a swap a kill interrupted.

    The model it replaces waits in best.prev/ (empty when there was none) until `settle_best` sees the backend
    record the trial: the objective promotes before the backend hears of the outcome, and a kill in between
    makes the backend re-run the trial, so best/ must then go back to the model it replaced."""
    new, prev = run.root / "best.new", run.root / "best.prev"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    os.replace(model_path, new / "model.keras")
    (new / "arch.json").write_text(arch_json, encoding="utf-8")
    (new / "trial.json").write_text(json.dumps(trial, indent=2, sort_keys=True, default=str), encoding="utf-8")
    if prev.exists():  # best/ itself is unconfirmed; best.prev/ still holds the last confirmed best
        shutil.rmtree(run.best, ignore_errors=True)
    elif run.best.exists():
        os.replace(run.best, prev)
    else:
        prev.mkdir()
    os.replace(new, run.best)


def settle_best(run: RunDir, done: Collection[int], running: Collection[int] = ()) -> None:
    """Confirm best/ once the backend has recorded its trial as done (`done`: those trial numbers), or
    roll it back to best.prev/ when that trial was cut off before the backend recorded it. A trial still
    `running` (another worker's, between its promotion and the backend's record) is left to settle later."""
    prev = run.root / "best.prev"
    if not prev.exists():
        return
    try:
        trial = json.loads((run.best / "trial.json").read_text())["trial"]
    except (OSError, ValueError, KeyError):
        trial = None
    if trial is not None and trial in done:
        shutil.rmtree(prev, ignore_errors=True)
        return
    if trial is not None and trial in running:
        return
    shutil.rmtree(run.best, ignore_errors=True)
    if any(prev.iterdir()):
        os.replace(prev, run.best)
    else:
        prev.rmdir()


def recover_best(run: RunDir) -> None:
    new, old = run.root / "best.new", run.root / "best.old"  # best.old/: made by versions before best.prev/
    if not run.best.exists() and (new / "trial.json").exists():
        os.replace(new, run.best)  # killed between the two renames: the new best was complete
    elif not run.best.exists() and old.exists():
        os.replace(old, run.best)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def clear_pending(run: RunDir) -> None:
    shutil.rmtree(run.pending, ignore_errors=True)
