"""The `nas` command line: validate, search, export, ui, report, status, dashboard, schema.

Heavy libraries (TensorFlow, MLflow, Optuna) are imported inside the commands that need them, so
`nas --help` and `nas validate` answer quickly. Every user mistake ends as one message and exit code 2;
`--debug` adds the traceback for bug reports.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.exceptions import TyperException

from nas import __version__
from nas.errors import NasError

app = typer.Typer(
    name="nas",
    help="Neural architecture search for image-classification CNNs: YAML space -> Optuna -> Keras 3 -> MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

SpecArg = Annotated[Path, typer.Argument(metavar="SPEC", help="the YAML search space, e.g. search_spaces/digits.yaml",
                                         show_default=False)]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="where run directories and the MLflow store live")]


def _version(value: bool) -> None:
    if value:
        console.print(f"nas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks (for bug reports)")] = False,
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="print the version")] = None,
) -> None:
    """Run `nas COMMAND --help` for a command's options."""


@app.command()
def validate(
    spec: SpecArg,
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: Annotated[str | None,
                            typer.Option(help="the MLflow tracking URI `nas search` would be given")] = None,
    budget: Annotated[str | None, typer.Option(help="print the plan for this budget (e.g. 30m): a probe of a few "
                                                    "batches, no trial")] = None,
) -> None:
    """Check a spec, its data, the MLflow store and the run dir; print the space, model sizes, impossible shapes."""
    from nas.data_info import load_splits
    from nas.spec import load_spec
    from nas.validate import report

    loaded = load_spec(spec)
    with err_console.status("loading data"):
        splits, info, description = load_splits(loaded)
    s = report(loaded, info, description, (len(splits.train.y), len(splits.val.y), len(splits.test.y)), console,
               runs_dir=runs_dir, tracking_uri=tracking_uri)
    if s.impossible + s.too_large == s.samples:
        raise NasError(f"{spec}: every sampled architecture is impossible or too large; fix space.depth, "
                       "space.strides, space.pooling or space.max_params")
    seconds = _seconds("--budget", budget) or loaded.spec.search.budget
    if seconds:
        from nas import framework as fw
        from nas.budget import plan_budget
        from nas.worker import InlineRunner, ProcessRunner

        t = loaded.spec.train
        # the probe runs here unless Keras is already loaded on another framework (a keras: data source)
        setup = fw.Setup.of(t)
        runner = InlineRunner(splits, setup) if fw.loaded() in (None, t.backend) \
            else ProcessRunner(splits, setup=setup)
        try:
            with err_console.status("probing the cheapest and the dearest candidates"):
                plan = plan_budget(loaded.spec, info, splits, runner, seconds)
        finally:
            runner.close()
        for line in plan.lines():
            console.print(line, markup=False)
    console.print(f"[green]ok[/]: {spec} is valid")


@app.command()
def search(
    spec: SpecArg,
    runs_dir: RunsDir = Path("runs"),
    storage: Annotated[str | None,
                       typer.Option(help="Optuna storage URL (default: sqlite file in the run dir)")] = None,
    tracking_uri: Annotated[str | None,
                            typer.Option(help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db)")] = None,
    new: Annotated[bool, typer.Option("--new",
                                      help="start over: move an existing run dir aside instead of resuming")] = False,
    trials: Annotated[int | None, typer.Option(min=1, help="override search.trials")] = None,
    timeout: Annotated[str | None, typer.Option(help="override search.timeout, e.g. 30m")] = None,
    budget: Annotated[str | None, typer.Option(help="override search.budget: the whole search ends by then, e.g. "
                                                    "30m")] = None,
    inline: Annotated[bool, typer.Option("--inline", help="train in this process instead of a worker process")] = False,
    workers: Annotated[int | None, typer.Option(help="override search.workers: trials trained at once on this "
                                                     "machine")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs the workers train on, e.g. 0,2 (default: every visible "
                                                  "GPU, worker i on GPU i mod count)")] = None,
) -> None:
    """Run (or resume) the search a spec describes; rerunning the same command resumes it."""
    from nas.search import SearchOptions, run

    if workers is not None and workers < 1:
        raise NasError(f"--workers {workers}: expected 1 or more trials at once (1 trains one trial at a time)")
    opts = SearchOptions(runs_dir=runs_dir, storage=storage, tracking_uri=tracking_uri, new=new, trials=trials,
                         timeout=_seconds("--timeout", timeout), budget=_seconds("--budget", budget), inline=inline,
                         workers=workers, gpus=gpus)
    run(spec, opts, console)


def _seconds(flag: str, raw: str | None) -> float | None:
    """A duration flag (90s, 30m, 2h, 1h30m) in seconds."""
    from nas.spec.model import _duration

    if raw is None:
        return None
    try:
        seconds = float(_duration(raw))
    except ValueError as exc:
        raise NasError(f"{flag}: {exc}") from None
    if seconds <= 0:
        raise NasError(f"{flag}: expected a positive duration such as 30m, got {raw!r}")
    return seconds


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="a finished search's run directory, e.g. "
                                                                    "runs/fashion_mnist", show_default=False)],
    trial: Annotated[int | None, typer.Option(help="export this trial instead of the best one")] = None,
    formats: Annotated[str | None, typer.Option(help="comma-separated: keras,saved_model,tflite-float32,"
                                                         "tflite-float16,tflite-dynamic,tflite-int8,onnx")] = None,
    sparsity: Annotated[float | None, typer.Option(help="target weight sparsity in [0, 1); 0 skips pruning")] = None,
) -> None:
    """Retrain the winner on train+val, prune, quantize, export (.keras, SavedModel, TFLite, ONNX), measure."""
    from nas.export.pipeline import ExportOptions
    from nas.export.pipeline import export as run_export
    from nas.spec.dims import did_you_mean
    from nas.spec.model import EXPORT_FORMATS

    chosen = None
    if formats is not None:
        chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
        for f in chosen:
            if f not in EXPORT_FORMATS:
                raise NasError(f"--formats: unknown format {f!r}.{did_you_mean(f, EXPORT_FORMATS)} "
                               f"Expected a comma-separated list of {', '.join(EXPORT_FORMATS)}")
        if not chosen:
            raise NasError("--formats: empty; give e.g. tflite-int8,onnx")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise NasError(f"--sparsity {sparsity}: expected a value in [0, 1), e.g. 0.8 for 80% zero weights")
    run_export(run_dir, ExportOptions(trial=trial, formats=chosen, sparsity=sparsity), console)


@app.command()
def ui(
    run_dir: Annotated[Path | None, typer.Argument(
        metavar="RUN_DIR", help="a search's run directory, e.g. runs/digits (default: the latest under --runs-dir)",
        show_default=False)] = None,
    runs_dir: RunsDir = Path("runs"),
    tracking_uri: Annotated[str | None,
                            typer.Option(help="MLflow tracking URI (default: the runs dir's store)")] = None,
    host: Annotated[str,
                    typer.Option(help="address to bind; 127.0.0.1 keeps it private to this machine")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 5000,
    open_browser: Annotated[bool, typer.Option("--open", help="open the link in a web browser")] = False,
) -> None:
    """Open the MLflow UI on a search's trials (best first); prints the link. Ctrl-C stops the server."""
    from nas.ui import run_ui

    run_ui(run_dir, runs_dir, tracking_uri, host, port, open_browser, console)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="a search's run directory, e.g. runs/digits",
                                            show_default=False)],
) -> None:
    """Write RUN_DIR/report/index.html: one offline page of figures and tables; logged to MLflow too."""
    from nas.report import write_report

    with err_console.status("writing the report"):
        page = write_report(run_dir)
    console.print(f"report: {page}")


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="a search's run directory, e.g. runs/digits",
                                            show_default=False)],
    top: Annotated[int, typer.Option(min=1, help="leaderboard rows to show")] = 10,
) -> None:
    """Progress and leaderboard of a search, also while it runs (read-only: never disturbs it)."""
    from nas.status import show

    show(run_dir, console, top=top)


@app.command()
def dashboard(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR",
                                            help="an Optuna search's run directory, e.g. runs/digits",
                                            show_default=False)],
    host: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 keeps it private")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8080,
) -> None:
    """optuna-dashboard over a search's Optuna study (an extra: pip install optuna-dashboard). Ctrl-C stops it."""
    from nas.dashboard import run_dashboard

    run_dashboard(run_dir, host, port, console)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file instead of stdout")] = None,
) -> None:
    """Write the spec's JSON Schema (for editor completion, e.g. the YAML language server)."""
    from nas.spec.model import Spec

    doc = Spec.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "nas search spec"
    text = json.dumps(doc, indent=2)
    if output:
        output.write_text(text + "\n")
        err_console.print(f"wrote {output}; in VS Code add `# yaml-language-server: $schema={output}` atop a spec")
    else:
        print(text)


def _usage_error(exc: TyperException, argv: list[str]) -> None:
    """A command-line mistake: the message (with click's did-you-mean), the command's usage, where help is; exit 2."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message()
    possible = getattr(exc, "possibilities", None)
    if possible and "(Possible options:" in message:  # click's hint, in the did-you-mean form the spec errors use
        message = f"{message.split(' (Possible options:')[0]}. Did you mean {' or '.join(sorted(possible))}?"
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(message, markup=False, soft_wrap=True)
    if ctx is not None:
        err_console.print(ctx.get_usage(), markup=False, soft_wrap=True)
    where = ctx.command_path if ctx is not None else "nas" + "".join(f" {a}" for a in argv[:1] if a in app_commands())
    err_console.print(f"Run '{where} --help' for its arguments and options.", markup=False)
    sys.exit(exc.exit_code if exc.exit_code != 1 else 2)


def app_commands() -> set[str]:
    return {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = app(args=args, standalone_mode=False, prog_name="nas")
        if code == 130:  # Typer turns a Ctrl-C inside a command into this return value instead of raising
            err_console.print("interrupted")
            sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except TyperException as exc:  # Typer's (vendored) click errors: unknown command or option, bad or missing value
        _usage_error(exc, [a for a in args if not a.startswith('-')])
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except NasError as exc:
        if debug:
            traceback.print_exc()
        err_console.print("[bold red]error:[/] ", end="")
        err_console.print(str(exc), markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug in nas: say so plainly, keep the traceback one flag away
        if debug:
            traceback.print_exc()
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", markup=True, soft_wrap=True)
        if not debug:
            err_console.print("This is a bug in nas. Rerun with --debug and include the output in a report.")
        sys.exit(1)
