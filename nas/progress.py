"""What the user sees while a search runs: a live rich display on a terminal, plain lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from nas.trial import TrialState, competing_value, tally

STYLES = {TrialState.FINISHED: "green", TrialState.PRUNED: "yellow", TrialState.PAUSED: "cyan",
          TrialState.DIVERGED: "magenta", TrialState.FAILED: "red"}


class Reporter(Protocol):
    # counts: the trials a resumed search already has, by state
    def search_started(self, *, total: int, counts: dict[TrialState, int], best: float | None, epochs: int) -> None: ...
    def trial_started(self, number: int, params_count: int) -> None: ...
    def epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None: ...
    def trial_finished(self, number: int, state: TrialState, metrics: dict[str, float], reason: str | None,
                       continues: int | None = None) -> None: ...
    def close(self) -> None: ...


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


class _Counts:
    def __init__(self) -> None:
        self.total = self.epochs = 0
        self.by_state = tally(())
        self.best: float | None = None  # the leader's val_accuracy
        self.best_score: float | None = None  # what it competes with (nas.trial.competing_value)
        self.best_paused = False  # the leader waits at a rung (pruner asha): best/ holds its best epoch
        self.running: dict[int, tuple[int, float | None]] = {}  # trial -> (epoch, val_accuracy), every worker's

    def start(self, total: int, counts: dict[TrialState, int], best: float | None, epochs: int) -> None:
        self.total, self.by_state, self.best, self.epochs = total, dict(counts), best, epochs
        self.best_score = best

    @property
    def done(self) -> int:
        return sum(n for s, n in self.by_state.items() if s.counts)

    def others(self) -> str:
        """ "pruned 2  diverged 1  failed 0": the states besides finished (paused and diverged once there is one)"""
        return "  ".join(f"{s.value} {n}" for s, n in self.by_state.items()
                         if s in (TrialState.PRUNED, TrialState.FAILED)
                         or (s in (TrialState.PAUSED, TrialState.DIVERGED) and n))

    def finish(self, state: TrialState, metrics: dict[str, float], continues: int | None = None) -> None:
        if continues is not None and self.by_state[TrialState.PAUSED] > 0:
            self.by_state[TrialState.PAUSED] -= 1  # one configuration: counted once, in its latest state
        self.by_state[state] += 1
        # the winner rule, as best/ follows it: a paused trial leads once it beats the rest past the noise
        val = metrics.get("val_accuracy")
        score = competing_value(state, "val_accuracy", val if val is not None else math.nan,
                                metrics.get("val_samples"))
        if math.isfinite(score) and (self.best_score is None or score > self.best_score):
            self.best, self.best_score, self.best_paused = val, score, state == TrialState.PAUSED

    def best_text(self) -> str:
        return _fmt(self.best) + (" (paused)" if self.best_paused else "")


class RichReporter:
    """Trial n/N bar with ETA, the running trial's epoch and val accuracy, best so far, pruned/failed."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.c = _Counts()
        self.progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
            TimeRemainingColumn(), TextColumn("elapsed"), TimeElapsedColumn(), console=self.console,
        )
        self.task = self.progress.add_task("trials", total=1)
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.started = False

    def _status(self) -> Text:
        c = self.c
        return Text.assemble("best val_acc ", (c.best_text(), "bold green"), f"  |  {c.others()}")

    def _running(self) -> list[Text]:
        """One line per running trial (several with --workers), or "between trials"."""
        c = self.c
        if not c.running:
            return [Text("between trials", "cyan")]
        return [Text(f"trial {n} epoch {epoch}/{c.epochs}" + (" (the endgame: training on)" if epoch > c.epochs else "")
                     + f" val_acc {_fmt(val)}", "cyan")
                for n, (epoch, val) in sorted(c.running.items())]

    def _render(self) -> Group:
        return Group(self.progress, *self._running(), self._status())

    def _refresh(self) -> None:
        self.progress.update(self.task, completed=self.c.done, total=self.c.total)
        self.live.update(self._render())

    def search_started(self, *, total: int, counts: dict[TrialState, int], best: float | None, epochs: int) -> None:
        self.c.start(total, counts, best, epochs)
        # ETA counts only this session's trials: reset the bar's clock to the resumed position
        self.progress.reset(self.task, total=total, completed=self.c.done)
        if not self.started:
            self.live.start()
            self.started = True
        self._refresh()

    def trial_started(self, number: int, params_count: int) -> None:
        self.c.running[number] = (0, None)
        self._refresh()

    def epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        self.c.running[number] = (epoch, metrics.get("val_accuracy"))
        self._refresh()

    def trial_finished(self, number: int, state: TrialState, metrics: dict[str, float], reason: str | None,
                       continues: int | None = None) -> None:
        self.c.finish(state, metrics, continues)
        self.c.running.pop(number, None)
        style = STYLES.get(state, "white")
        tail = f"val_acc {_fmt(metrics.get('val_accuracy'))}" if state == TrialState.FINISHED else (reason or "")
        self.live.console.print(Text.assemble(f"trial {number:>3} ", (f"{state:<8}", style), " ", tail))
        self._refresh()

    def close(self) -> None:
        if self.started:
            self._refresh()
            self.live.stop()
            self.started = False


class PlainReporter:
    """One line per event, for logs and CI (no cursor movement)."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.c = _Counts()
        self.t0 = time.monotonic()

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def search_started(self, *, total: int, counts: dict[TrialState, int], best: float | None, epochs: int) -> None:
        self.c.start(total, counts, best, epochs)
        self._print(f"search: {self.c.done}/{total} trials done, best val_accuracy {_fmt(best)}")

    def trial_started(self, number: int, params_count: int) -> None:
        pass

    def epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def trial_finished(self, number: int, state: TrialState, metrics: dict[str, float], reason: str | None,
                       continues: int | None = None) -> None:
        self.c.finish(state, metrics, continues)
        detail = f"val_accuracy {_fmt(metrics.get('val_accuracy'))}" if state == TrialState.FINISHED else reason or ""
        others = self.c.others().replace("  ", ", ")
        self._print(f"trial {number:>3} {state.value:<8} {detail} [{self.c.done}/{self.c.total}, best "
                    f"{self.c.best_text()}, {others}, {time.monotonic() - self.t0:.0f}s]")

    def close(self) -> None:
        pass


def make_reporter(console: Console) -> Reporter:
    return RichReporter(console) if console.is_terminal else PlainReporter(console.file)
