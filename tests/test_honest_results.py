"""Honest results: the test split never moves with the search seed, never reaches a trial, never trains the
exported model; its fingerprint travels with every result; `nas export` ends cleanly whatever MLflow does.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from nas.data.splits import Split, Splits, fingerprint
from nas.errors import RunDirError
from nas.rundir import RunDir, claim, claim_for_export, remember_test_split


def _load(path: Path) -> Splits:
    from nas.data_info import load_splits
    from nas.spec.loader import load_spec

    return load_splits(load_spec(path))[0]


# --- the test split is chosen by data.split_seed, never by search.seed --------------------------------------


def test_search_seed_leaves_the_test_split_alone_and_split_seed_moves_it(tiny_spec) -> None:
    a, b = _load(tiny_spec("a", seed=0)), _load(tiny_spec("b", seed=7))
    assert np.array_equal(a.test.x, b.test.x) and np.array_equal(a.test.y, b.test.y)
    assert np.array_equal(a.val.y, b.val.y)
    assert fingerprint(a.test) == fingerprint(b.test)
    moved_path = tiny_spec("c", seed=0)
    moved_path.write_text(moved_path.read_text().replace("validation_fraction: 0.2", "validation_fraction: 0.2\n  split_seed: 3"))
    moved = _load(moved_path)
    assert fingerprint(moved.test) != fingerprint(a.test)
    assert len(moved.test) == len(a.test)  # same sizes, other images


def test_fingerprint_follows_images_and_labels() -> None:
    x, y = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1), np.array([0, 1])
    base = fingerprint(Split(x, y))
    assert fingerprint(Split(x.copy(), y.copy())) == base and len(base) == 16
    assert fingerprint(Split(x, y[::-1].copy())) != base  # a label changed
    changed = x.copy()
    changed[1, 2, 3, 0] += 1
    assert fingerprint(Split(changed, y)) != base  # one pixel changed


def test_a_default_split_seed_keeps_old_run_dirs_resumable(tiny_spec) -> None:
    """Run dirs made before data.split_seed existed keep their spec hash (else every resume is refused)."""
    from nas.spec.loader import load_spec

    path = tiny_spec("old")
    before = load_spec(path).hash
    path.write_text(path.read_text().replace("validation_fraction: 0.2", "validation_fraction: 0.2\n  split_seed: 0"))
    assert load_spec(path).hash == before
    path.write_text(path.read_text().replace("split_seed: 0", "split_seed: 1"))
    assert load_spec(path).hash != before


def test_a_resume_on_data_with_another_test_split_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    test = Split(np.zeros((3, 2, 2, 1)), np.array([0, 1, 0]))
    other = Split(np.ones((3, 2, 2, 1)), np.array([0, 1, 0]))
    run.write_meta(spec_hash="h")  # a run from before fingerprints: accepted, and from now on remembered
    assert remember_test_split(run, test, "digits") == fingerprint(test)
    assert run.read_meta() == {"spec_hash": "h", "test_fingerprint": fingerprint(test)}
    remember_test_split(run, test, "digits")  # the same data: fine
    with pytest.raises(RunDirError) as err:
        remember_test_split(run, other, "npz:data.npz")
    assert str(err.value) == (
        f"{run.meta}: test_fingerprint {fingerprint(test)} was recorded when this search started, but data.source "
        f"'npz:data.npz' now gives a test split with fingerprint {fingerprint(other)}: the data changed since, so "
        "this search's results would no longer share one test set. Restore the original data to resume, or rerun "
        f"with --new to start a fresh search on the new data (the old run is kept as {tmp_path.name}.<timestamp>)")
    assert run.read_meta()["test_fingerprint"] == fingerprint(test)  # not overwritten by the refused data


# --- nas export holds the run dir's lock ---------------------------------------------------------------------


def _hold(run: RunDir, command: str) -> subprocess.Popen[str]:
    code = ("import sys, time; from pathlib import Path; from nas.rundir import RunDir, claim; "
            f"lock = claim(RunDir(Path({str(run.root)!r})), {command!r}); print(lock.held, flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
    return holder


def test_export_is_refused_while_a_search_runs_in_the_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nas.cli import main

    run = RunDir(tmp_path / "tiny")
    run.root.mkdir()
    holder = _hold(run, "search")
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(run.root)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert " ".join(err.split()) == (
            f"error: {run.root}: a `nas search` (pid {holder.pid}) is running in this run directory and may replace "
            "best/ while the export reads it. Wait for the search to finish (or stop it with Ctrl-C), then rerun "
            f"`nas export {run.root}`")
    finally:
        holder.kill()
        holder.wait(10)


def test_a_search_is_refused_while_an_export_runs(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "tiny")
    run.root.mkdir()
    holder = _hold(run, "export")
    try:
        with pytest.raises(RunDirError, match=rf"`nas export` \(pid {holder.pid}\) is using this run directory; a "
                                              "search now could replace best/"):
            claim(run)
        with pytest.raises(RunDirError, match="two exports at once would overwrite"):
            claim_for_export(run)
    finally:
        holder.kill()
        holder.wait(10)


def test_a_search_exporting_its_own_winner_does_not_lock_itself_out(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with claim(run) as lock, claim_for_export(run) as inner:  # export.after_search, inside the search
        assert lock.held and not inner.held
    with claim_for_export(run) as alone:
        assert alone.held


# --- a trial worker never receives a test image ----------------------------------------------------------------

SENTINEL = 99.0  # no digits pixel is above 16: a test image marked this way is recognisable wherever it goes


@pytest.mark.slow
def test_a_trial_worker_receives_no_test_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.data import load_source, make_splits
    from nas.space import DataInfo, SearchSpace
    from nas.spec import parse_spec
    from nas.trial import TrialTask
    from nas.worker import InlineRunner, ProcessRunner

    raw = load_source("digits", Path("."))
    real = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
    splits = Splits(real.train, real.val, Split(np.full_like(real.test.x, SENTINEL), real.test.y),
                    real.class_names, real.pixel_max)
    test_bytes = np.full_like(real.test.x[:1], SENTINEL).tobytes()
    info = DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)
    spec = parse_spec("name: w\ndata: {source: digits}\nspace: {depth: 1, filters: 8, head: {depth: 0}}\n"
                      "train: {epochs: 1}\n")
    candidate = SearchSpace(spec).decode({}, info)

    runner = ProcessRunner(splits, max_tasks=10)
    spawned: list[Any] = []  # the data each new worker process starts with
    sent: list[bytes] = []  # every message to a worker, as it crosses the pipe
    ctx = runner._ctx

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(ctx, name)

        def Process(self, **kw: Any) -> Any:  # noqa: N802 (multiprocessing's name)
            spawned.append(kw["args"][1])
            return ctx.Process(**kw)

    monkeypatch.setattr(runner, "_ctx", Recording())
    send = runner._send
    monkeypatch.setattr(runner, "_send", lambda msg: (sent.append(pickle.dumps(msg)), send(msg))[1])
    try:
        model = tmp_path / "m.keras"
        out = runner.run(TrialTask(0, candidate, seed=0, epochs=1, save_model_to=str(model)), lambda e, m: "continue")
        assert out.state == "finished" and model.exists()
        first_pid = runner._proc.pid
        assert len(spawned) == 1 and len(spawned[0].test) == 0
        assert np.array_equal(spawned[0].train.x, splits.train.x) and np.array_equal(spawned[0].val.x, splits.val.x)
        assert test_bytes not in pickle.dumps(spawned[0]) and not any(test_bytes in m for m in sent)

        measured = runner.evaluate(str(model), ("val", "test"))  # the final measurement: only here
        assert measured["test_samples"] == len(splits.test) and test_bytes in sent[-1]
        runner.run(TrialTask(1, candidate, seed=1, epochs=1), lambda e, m: "continue")
        assert runner._proc.pid != first_pid  # the worker that saw test images trains nothing more
        assert len(spawned) == 2 and len(spawned[1].test) == 0 and test_bytes not in sent[-1]
    finally:
        runner.close()

    import nas.worker

    seen: list[Splits] = []
    monkeypatch.setattr(nas.worker, "_execute", lambda task, s, hook: seen.append(s))
    inline = InlineRunner(splits)
    inline.run(TrialTask(0, candidate, seed=0, epochs=1), lambda e, m: "continue")
    assert len(seen[0].test) == 0 and not (seen[0].train.x == SENTINEL).any()
    assert inline.evaluate(str(model), ("test",))["test_samples"] == len(splits.test)


# --- one real search, then export: fingerprint everywhere, retraining on train+val, MLflow failures -----------

EXPORT = "export:\n  latency_runs: 10\n  registry: keras\n"


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Splits]:
    from nas.search import SearchOptions, run
    from tests.conftest import TINY_SPEC

    tmp = tmp_path_factory.mktemp("honest")
    spec = tmp / "tiny.yaml"
    spec.write_text(TINY_SPEC.format(name="tiny", epochs=1, trials=1, seed=3) + EXPORT)
    run(spec, SearchOptions(runs_dir=tmp / "runs", inline=True), Console(file=io.StringIO()))
    return tmp / "runs" / "tiny", spec, _load(spec)


@pytest.mark.slow
def test_the_test_fingerprint_is_in_metrics_run_json_and_mlflow(searched: tuple[Path, Path, Splits]) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, _, splits = searched
    expected = fingerprint(splits.test)
    assert json.loads((run_dir / "best" / "metrics.json").read_text())["test_fingerprint"] == expected
    meta = RunDir(run_dir).read_meta()
    assert meta["test_fingerprint"] == expected
    parent = MlflowClient(meta["tracking_uri"]).get_run(meta["mlflow_parent_run_id"])
    assert parent.data.params["test_fingerprint"] == expected


@pytest.fixture(scope="module")
def exported(searched: tuple[Path, Path, Splits]) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]:
    import nas.export.pipeline as pipeline

    run_dir, _, _ = searched
    fitted: list[tuple[np.ndarray, np.ndarray]] = []  # what the real export trains on, as it trains
    real_fit = pipeline._fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "_fit", lambda model, cand, x, y, *a, **kw: (fitted.append((x, y)),
                                                                            real_fit(model, cand, x, y, *a, **kw))[1])
        manifest = pipeline.export(run_dir, pipeline.ExportOptions(formats=("keras",), sparsity=0.0),
                                   Console(file=io.StringIO()))
    return manifest, fitted


@pytest.mark.slow
def test_export_retrains_on_exactly_train_and_validation(searched, exported) -> None:
    _, _, splits = searched
    manifest, fitted = exported
    assert fitted, "the export never trained"
    test_rows = {row.tobytes() for row in splits.test.x}
    train_val_rows = {row.tobytes() for row in np.concatenate([splits.train.x, splits.val.x])}
    for x, y in fitted:
        assert np.array_equal(x, np.concatenate([splits.train.x, splits.val.x]))
        assert np.array_equal(y, np.concatenate([splits.train.y, splits.val.y]))
        # digits repeats a few images across splits: those are allowed only because train or val has them too
        assert not {row.tobytes() for row in x} & (test_rows - train_val_rows)
    assert manifest["training"]["retrain_images"] == len(splits.train) + len(splits.val)


@pytest.mark.slow
def test_the_manifest_carries_the_fingerprint_and_is_logged_to_mlflow(searched, exported) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, _, splits = searched
    manifest, _ = exported
    on_disk = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert on_disk == manifest and manifest["source"]["test_fingerprint"] == fingerprint(splits.test)
    assert manifest["mlflow"]["logged"] and manifest["mlflow"]["registered"]["format"] == "keras"
    client = MlflowClient(manifest["mlflow"]["tracking_uri"])
    logged = client.download_artifacts(manifest["mlflow"]["run_id"], "export/manifest.json", str(run_dir.parent))
    in_mlflow = json.loads(Path(logged).read_text())
    assert in_mlflow == {k: v for k, v in manifest.items() if k != "mlflow"}  # written before MLflow heard of it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_an_unreachable_mlflow_leaves_a_complete_export_and_a_clear_error(
        searched, exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nas.cli import main

    run_dir, _, _ = searched
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", ".lock"))
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    RunDir(copy).write_meta(tracking_uri=uri)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(copy), "--formats", "keras", "--sparsity", "0"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out + err
    assert "internal error" not in err and "Traceback" not in err
    err = " ".join(err.split())
    assert f"{copy / 'export'}/ holds the complete export (manifest.json included), but logging it to MLflow at {uri!r}" in err
    assert f"then rerun `nas export {copy}` to log and register it" in err
    manifest = json.loads((copy / "export" / "manifest.json").read_text())
    assert manifest["artifacts"]["keras"]["status"] == "ok" and (copy / "export" / "model.keras").exists()
    assert manifest["mlflow"]["logged"] is False and manifest["mlflow"]["tracking_uri"] == uri


@pytest.mark.slow
def test_an_mlflow_store_without_the_run_is_a_clear_error(searched, exported, tmp_path: Path) -> None:
    """The real store, but the parent run it names is gone (deleted store, another store): an MlflowException."""
    from nas.export.registry import ExportTrackingError, log_and_register
    from nas.export.source import choose

    run_dir, _, _ = searched
    manifest, _ = exported
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    RunDir(copy).write_meta(mlflow_parent_run_id="0" * 32)
    src = choose(copy, None)
    with pytest.raises(ExportTrackingError) as err:
        log_and_register(src, copy / "export", manifest, "keras")
    assert src.meta["tracking_uri"] in str(err.value) and "0" * 32 in str(err.value)
    assert f"rerun `nas export {copy}`" in str(err.value)
