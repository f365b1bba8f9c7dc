"""Where trials execute: in a recycled child process (default) or inline.

A child process bounds memory (TF grows ~12 MB per trial in one process even after clear_session) and
turns a hard crash or an OOM kill into one failed trial instead of a dead search. The child only computes:
every decision (prune or not) and every log line stays in the parent, which owns Optuna and MLflow.
GPU placement and the Keras framework (nas.framework) are set here: `env` and KERAS_BACKEND reach the child
before Keras is imported.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Protocol

from nas import framework as fw
from nas.data.splits import Splits
from nas.space import Candidate
from nas.trial import EpochHook, TrialResult, TrialState, TrialTask, timeout_reason

#: seconds a new worker process may take to import TensorFlow and say it is ready
START_TIMEOUT_S = 180.0
_START_LOCK = threading.Lock()


class Runner(Protocol):
    device: str  # where trials train: "CPU" or "GPU:0"
    framework: str  # the Keras framework they train on: tensorflow, jax or torch

    def run(self, task: TrialTask, on_epoch: EpochHook) -> TrialResult: ...
    def evaluate(self, model_path: str, which: tuple[str, ...]) -> dict[str, float]: ...
    def probe(self, candidates: list[Candidate]) -> list[float]: ...  # seconds per training sample, each
    def abort(self) -> None: ...  # from another thread: the running trial stops at once (KeyboardInterrupt)
    def close(self) -> None: ...


def _clear_session() -> None:
    """Drop the last trial's models and graphs: Keras' global state, TF's kernel cache, and a full garbage
    collection (Keras' clear_session runs gc.collect itself; a second one finds nothing more)."""
    import keras

    keras.backend.clear_session()
    fw.release_memory()


def _execute(task: TrialTask, splits: Splits, on_epoch: EpochHook, clear: bool = True) -> TrialResult:
    """Run one trial, with the session cleared first unless the caller has just done that; map exceptions to a
    failed outcome with a reason."""
    from nas.train import describe_failure, run_trial

    if clear:
        _clear_session()
    try:
        return run_trial(task, splits, on_epoch)
    except Exception as exc:  # one trial's failure must never end the search
        return _failed(*describe_failure(exc))


def _failed(reason: str, tb: str | None = None) -> TrialResult:
    return TrialResult(TrialState.FAILED, reason=reason, traceback=tb)


class InlineRunner:
    """Trials in this process: no isolation, but no start-up cost. For debugging and benchmarks."""

    def __init__(self, splits: Splits, setup: fw.Setup = fw.DEFAULT_SETUP, trial_timeout: float | None = None):
        self.splits, self.trial_splits = splits, splits.without_test()  # a trial never sees the test split
        self.trial_timeout = trial_timeout
        self.device = fw.prepare(setup)
        self.framework = setup.framework

    def run(self, task: TrialTask, on_epoch: EpochHook) -> TrialResult:
        # No process to kill here: the trial stops itself at the first batch past the limit.
        return _execute(dataclasses.replace(task, time_limit_s=self.trial_timeout), self.trial_splits, on_epoch)

    def evaluate(self, model_path: str, which: tuple[str, ...]) -> dict[str, float]:
        from nas.train import evaluate_model

        return evaluate_model(model_path, self.splits, which)

    def probe(self, candidates: list[Candidate]) -> list[float]:
        from nas.train import probe

        return [probe(c, self.trial_splits) for c in candidates]

    def abort(self) -> None:
        pass  # an inline trial is only ever run by the thread that receives Ctrl-C itself

    def close(self) -> None:
        pass


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the search process dies, even by kill -9. An orphan
    would train on unseen until its next message failed, holding memory (on a GPU, the memory the resumed
    search's new worker needs). The parent's main thread starts workers; PDEATHSIG follows that thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took hold
        os._exit(1)


def _child_main(conn: Any, splits: Splits, setup: fw.Setup, log_path: str | None) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    if log_path:
        # TF's C++ runtime writes straight to fd 1/2; keep it out of the progress display but on disk.
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    device = fw.prepare(setup)
    from nas.train import evaluate_model, probe

    # TensorFlow and Keras leave ~400,000 long-lived objects after import, and every full collection (one per
    # clear_session) walked them all: 0.2-0.5 s each on a 2-core machine, two per trial. Frozen, a collection
    # walks only what trials created since. Frozen objects are still freed by reference counting; only cycles
    # among them would never be collected, and import-time objects live as long as the process anyway.
    gc.collect()
    gc.freeze()
    import keras

    conn.send(("ready", device, keras.backend.backend()))
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        if msg[0] == "trial":
            def on_epoch(epoch: int, metrics: dict[str, float]) -> str:
                conn.send(("epoch", epoch, metrics))
                reply = conn.recv()
                return str(reply[1])

            conn.send(("result", _execute(msg[1], splits, on_epoch, clear=False)))  # cleared after the last message
        elif msg[0] == "evaluate":
            try:
                conn.send(("result", evaluate_model(msg[1], msg[3], msg[2])))  # its own splits: test is only here
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
        elif msg[0] == "probe":
            try:
                conn.send(("result", [probe(c, splits) for c in msg[1]]))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
        # Clear for the next message now, while the parent records this one's outcome (MLflow, the backend,
        # the next trial's sampling), rather than at the start of the next trial, on its clock.
        _clear_session()


class WorkerDied(RuntimeError):
    pass


class _TimedOut(Exception):
    pass


class ProcessRunner:
    """One spawned child at a time, replaced after `max_tasks` trials or when it dies."""

    def __init__(self, splits: Splits, *, setup: fw.Setup = fw.DEFAULT_SETUP, max_tasks: int = 25,
                 env: dict[str, str] | None = None, log_path: str | None = None,
                 trial_timeout: float | None = None, start_timeout: float = START_TIMEOUT_S):
        self.splits, self.setup, self.max_tasks = splits, setup, max_tasks
        self.log_path, self.trial_timeout, self.start_timeout = log_path, trial_timeout, start_timeout
        self.env = dict(env or {})
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._tasks = 0
        self._abort = threading.Event()
        self.device = "?"
        self.framework = setup.framework  # what the worker reports running Keras on, once it started

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        _START_LOCK.acquire()  # os.environ is the process's: one worker of several starts at a time
        saved = {k: os.environ.get(k) for k in (*self.env, "KERAS_BACKEND")}
        # spawn copies os.environ at start; "" is meaningful (CUDA_VISIBLE_DEVICES). Keras reads KERAS_BACKEND
        # at its first import in the child, which is after this.
        os.environ.update({**self.env, "KERAS_BACKEND": self.setup.framework})
        try:
            self._proc = self._ctx.Process(target=_child_main, args=(child, self.splits.without_test(),
                                                                     self.setup, self.log_path),
                                           name="nas-trial-worker", daemon=True)
            self._proc.start()
        except Exception as exc:  # fork/spawn refused (no memory, process limit), data that cannot be pickled
            self._proc = None
            raise WorkerDied(f"could not start a trial worker process ({type(exc).__name__}: {exc})") from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _START_LOCK.release()
        child.close()
        self._conn, self._tasks = parent, 0
        try:
            _, device, framework = self._recv(time.monotonic() + self.start_timeout)
            self.device, self.framework = str(device), str(framework)
        except _TimedOut:
            self.close(force=True)
            where = f"; see {self.log_path}" if self.log_path else ""
            raise WorkerDied("the trial worker process did not start within "
                             f"{self.start_timeout:.0f}s{where}") from None

    def _died(self) -> WorkerDied:
        self._proc.join(5)
        code = self._proc.exitcode
        self._reset()
        return WorkerDied(_death_reason(code))

    def _recv(self, deadline: float = math.inf) -> Any:
        while True:  # the deadline first: a worker reporting fast epochs always has a message waiting
            if time.monotonic() > deadline:
                raise _TimedOut
            if self._conn.poll(0.2):
                break
            if self._abort.is_set():  # another worker's thread stops the search (Ctrl-C, an error)
                raise KeyboardInterrupt
            if not self._proc.is_alive():
                raise self._died()
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            self._conn.send(msg)
        except OSError:  # broken pipe / reset: the child is gone
            raise self._died() from None

    def _ensure(self) -> None:
        if self._proc is None or not self._proc.is_alive() or self._tasks >= self.max_tasks:
            self.close()
            self._start()

    def run(self, task: TrialTask, on_epoch: EpochHook) -> TrialResult:
        history: list[dict[str, float]] = []
        started = time.monotonic()
        try:
            self._ensure()  # a worker that cannot even start fails this trial, not the search
            self._tasks += 1
            started = time.monotonic()
            deadline = started + (self.trial_timeout or math.inf)
            self._send(("trial", task))
            while True:
                msg = self._recv(deadline)
                if msg[0] == "epoch":
                    history.append(msg[2])
                    self._send(("decision", on_epoch(msg[1], msg[2])))
                else:
                    result: TrialResult = msg[1]
                    # a failure may leave TensorFlow broken (a GPU after OOM): new worker
                    if result.state == TrialState.FAILED:
                        self._tasks = self.max_tasks
                    return result
        except WorkerDied as exc:
            return _failed(str(exc))
        except _TimedOut:
            self.close(force=True)  # the worker is mid-epoch (or hung): only a new one is in a known state
            assert self.trial_timeout is not None
            return TrialResult(TrialState.FAILED, timeout_reason(self.trial_timeout, len(history)), history=history,
                               metrics={"epochs_run": float(len(history)), "wall_time_s": time.monotonic() - started})
        except BaseException:
            self.close(force=True)  # Ctrl-C or an error in our own callback: the child is mid-trial
            raise

    def evaluate(self, model_path: str, which: tuple[str, ...]) -> dict[str, float]:
        self._ensure()
        self._send(("evaluate", model_path, which, self.splits.keep(*which)))
        self._tasks = self.max_tasks  # a worker that has seen test images never trains another trial
        msg = self._recv()
        if msg[0] == "error":
            raise RuntimeError(msg[1])
        return msg[1]  # type: ignore[no-any-return]

    def probe(self, candidates: list[Candidate]) -> list[float]:
        self._ensure()
        self._send(("probe", candidates))
        msg = self._recv()
        if msg[0] == "error":
            raise RuntimeError(msg[1])
        return msg[1]  # type: ignore[no-any-return]

    def abort(self) -> None:
        self._abort.set()

    def _reset(self) -> None:
        self._proc, self._conn = None, None

    def close(self, force: bool = False) -> None:
        if self._proc is None:
            return
        if not force and self._proc.is_alive():
            try:
                self._conn.send(("stop",))
                self._proc.join(10)
            except (OSError, EOFError):
                pass
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._reset()


def _call_child(conn: Any, setup: fw.Setup, fn: Any, args: tuple[Any, ...]) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    try:
        fw.prepare(setup)
        conn.send(("result", fn(*args)))
    except Exception as exc:
        import traceback

        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def run_in_framework(setup: fw.Setup, fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a new process that runs Keras on `setup.framework` (a module-level function, picklable
    arguments and result): for work outside a search that must train on another framework than this process,
    such as `nas export` retraining a JAX-trained winner."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    with _START_LOCK:
        saved = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = setup.framework
        try:
            proc = ctx.Process(target=_call_child, args=(child, setup, fn, args), name="nas-framework-worker",
                               daemon=True)
            proc.start()
        finally:
            if saved is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = saved
    child.close()
    try:
        while not parent.poll(0.5):
            if not proc.is_alive():
                proc.join(5)
                raise WorkerDied(_death_reason(proc.exitcode).replace("the trial's worker", "the worker"))
        msg = parent.recv()
    except BaseException:
        proc.kill()
        proc.join()
        raise
    proc.join(30)
    if msg[0] == "error":
        raise RuntimeError(f"{msg[1]} (in the worker process on {setup.framework})\n{msg[2]}")
    return msg[1]


def _death_reason(code: int | None) -> str:
    if code is not None and code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (the system may have run out of memory)" if sig == "SIGKILL" else ""
        return f"the trial's worker process was killed by {sig}{hint}"
    return f"the trial's worker process exited unexpectedly (exit code {code})"
