"""Trials on every Keras framework (train.backend: tensorflow | jax | torch), mixed precision and the XLA fallback.

Keras fixes its framework once per process, so JAX and PyTorch trials run in worker processes (the pytest process
itself runs Keras on TensorFlow); one worker per framework is shared by this module's tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from nas.data import load_source, make_splits
from nas.errors import NasError
from nas.framework import Setup
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
from nas.trial import TrialTask
from nas.worker import InlineRunner, ProcessRunner

pytestmark = pytest.mark.slow

FRAMEWORKS = ["jax", "torch"]
SPEC = """\
name: f
data: {source: digits}
augment: {translation: 0.1, flip: horizontal}
space: {depth: 2, filters: 8, dropout: 0.2, head: {depth: 0}}
train: {epochs: 3, optimizer: adamw, learning_rate: 1e-2, weight_decay: 0.01, schedule: cosine, batch_size: 32}
"""


def decode(spec_text: str):
    """(the spec's default candidate, digits splits)."""
    raw = load_source("digits", Path("."))
    splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
    info = DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)
    return SearchSpace(parse_spec(spec_text)).decode({}, info), splits


@pytest.fixture(scope="module")
def digits():
    return decode(SPEC)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def worker(request, digits, tmp_path_factory):
    candidate, splits = digits
    log = tmp_path_factory.mktemp(request.param) / "worker.log"
    runner = ProcessRunner(splits, setup=Setup(request.param), max_tasks=50, log_path=str(log))
    yield request.param, runner, candidate
    runner.close()


def keep_going(epoch: int, metrics: dict[str, float]) -> str:
    return "continue"


def layer_classes(keras_file: Path) -> set[str]:
    with zipfile.ZipFile(keras_file) as z:
        config = json.loads(z.read("config.json"))
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "class_name" in node and "config" in node:
                found.add(str(node["class_name"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


def test_a_trial_trains_on_the_framework_and_saves_a_model_without_augmentation(worker, tmp_path: Path) -> None:
    framework, runner, candidate = worker
    out = runner.run(TrialTask(0, candidate, seed=0, epochs=3, save_model_to=str(tmp_path / "m.keras")), keep_going)
    assert out.state == "finished", out.reason
    assert out.metrics["epochs_run"] == 3 and out.metrics["val_accuracy"] > 0.3  # it learns digits (chance: 0.1)
    log = Path(runner.log_path).read_text()
    assert "Traceback" not in log
    classes = layer_classes(Path(out.model_path))
    assert "Conv2D" in classes and not any(c.startswith("Random") for c in classes)
    # the saved model is Keras' own format: it loads and predicts here, where Keras runs on TensorFlow
    import keras

    model = keras.models.load_model(out.model_path)
    assert all(v.dtype == "float32" for v in model.weights)
    splits = runner.splits
    probs = model.predict(splits.val.x[:64].astype("float32"), verbose=0)
    assert probs.shape == (64, splits.num_classes)
    assert (probs.argmax(1) == splits.val.y[:64]).mean() > 0.25


def test_the_same_seed_gives_the_same_trial_on_the_framework(worker) -> None:
    framework, runner, candidate = worker
    a = runner.run(TrialTask(1, candidate, seed=7, epochs=2), keep_going)
    b = runner.run(TrialTask(2, candidate, seed=7, epochs=2), keep_going)
    c = runner.run(TrialTask(3, candidate, seed=8, epochs=2), keep_going)
    assert a.state == b.state == "finished"
    assert a.history == b.history
    assert a.history != c.history


def test_a_paused_trial_resumes_exactly_on_the_framework(worker, tmp_path: Path) -> None:
    framework, runner, candidate = worker
    straight = runner.run(TrialTask(4, candidate, seed=3, epochs=3), keep_going)
    ckpt = tmp_path / "t.npz"
    paused = runner.run(TrialTask(5, candidate, seed=3, epochs=3, checkpoint_to=str(ckpt)),
                        lambda e, m: "pause" if e == 1 else "continue")
    assert paused.state == "paused" and ckpt.exists()
    resumed = runner.run(TrialTask(5, candidate, seed=3, epochs=3, resume_from=str(ckpt)), keep_going)
    assert resumed.state == "finished" and resumed.metrics["epochs_run"] == 2
    assert resumed.history == straight.history


def test_mixed_precision_trains_in_bfloat16_and_saves_a_float32_model(digits, tmp_path: Path) -> None:
    candidate, splits = digits
    runs = {}
    for precision in ("float32", "mixed"):
        runner = ProcessRunner(splits, setup=Setup("jax", precision=precision), max_tasks=5)
        try:
            runs[precision] = runner.run(TrialTask(0, candidate, seed=0, epochs=2,
                                                   save_model_to=str(tmp_path / f"{precision}.keras")), keep_going)
        finally:
            runner.close()
    mixed = runs["mixed"]
    assert mixed.state == "finished" and mixed.metrics["val_accuracy"] > 0.3
    assert mixed.history != runs["float32"].history  # it did compute in another precision
    with zipfile.ZipFile(mixed.model_path) as z:
        config = z.read("config.json").decode()
    assert "bfloat16" not in config and "mixed" not in config
    import keras

    model = keras.models.load_model(mixed.model_path)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


def test_inline_on_another_framework_than_the_process_is_refused(digits) -> None:
    import keras  # this process runs Keras on TensorFlow

    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(NasError, match="already runs Keras on tensorflow, so it cannot train on jax; drop --inline"):
        InlineRunner(digits[1], Setup("jax"))


def test_a_model_xla_cannot_compile_trains_without_it_and_says_so(digits, monkeypatch) -> None:
    import keras
    import nas.train
    import tensorflow as tf

    # no augmentation: TensorFlow's image-transform layers keep Keras from compiling with XLA at all
    candidate, splits = decode("name: x\ndata: {source: digits}\nspace: {depth: 1, filters: 8, head: {depth: 0}}\n")

    class HostCall(keras.layers.Layer):  # a custom layer calling back into Python: XLA cannot compile it
        def call(self, x):
            zero = tf.numpy_function(lambda a: a * 0, [x], tf.float32, stateful=False)
            zero.set_shape(x.shape)
            return x + tf.stop_gradient(zero)  # gradients flow through x

        def compute_output_shape(self, shape):
            return shape

    real = nas.train.build_model

    def with_host_call(arch):
        model = real(arch)
        out = keras.layers.Activation("linear")(HostCall()(model.output))
        return keras.Model(model.input, out)

    monkeypatch.setattr(nas.train, "build_model", with_host_call)
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()  # an inline runner earlier in this process may have enabled it,
    tf_config.disable_op_determinism()  # and Keras then never compiles with XLA on TensorFlow
    try:
        out = nas.train.run_trial(TrialTask(0, candidate, seed=0, epochs=1), splits.without_test(), keep_going,
                                  jit_compile=True)
    finally:
        if was:
            tf.config.experimental.enable_op_determinism()
    assert out.state == "finished", out.reason
    assert out.tags["nas.jit_compile"].startswith("off: XLA could not compile this model")
    plain = nas.train.run_trial(TrialTask(0, candidate, seed=0, epochs=1), splits.without_test(), keep_going,
                                jit_compile=False)
    assert "nas.jit_compile" not in plain.tags


@pytest.mark.parametrize(("framework", "search"), [("jax", "optuna"), ("torch", "keras-tuner")])
def test_a_search_runs_on_the_framework_end_to_end(framework: str, search: str, tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(name=f"e2e_{framework}", trials=3, epochs=3)
    text = spec.read_text().replace("train:\n", f"train:\n  backend: {framework}\n")
    text = text.replace("batch_size: 64", "batch_size: 16")  # so that 3 epochs learn digits clearly
    if search == "keras-tuner":  # the KerasTuner backend runs in a TensorFlow process; its trials do not
        text = text.replace("search:\n  sampler: tpe\n  pruner: none\n",
                            "search:\n  backend: keras-tuner\n  algorithm: random\n")
        text = text.replace("  startup_trials: 2\n", "")
    spec.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "nas", "search", str(spec), "--runs-dir", str(tmp_path / "runs")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / f"e2e_{framework}"
    board = (run / "leaderboard.csv").read_text()
    assert board.count("finished") >= 2, board
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["test_accuracy"] > 0.3
    # as reported by the worker's own Keras, not by the spec
    assert json.loads((run / "best" / "trial.json").read_text())["framework"] == framework

    # export: retrained and pruned on the framework (in a worker process), converted by TensorFlow
    proc = subprocess.run([sys.executable, "-m", "nas", "export", str(run), "--formats", "keras,tflite-int8",
                           "--sparsity", "0.5"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    training = manifest["training"]
    assert training["framework"] == framework
    assert training["test_accuracy_pruned"] > 0.3
    # the model TensorFlow loaded is the one the framework trained: the same predictions
    assert abs(training["test_accuracy_reloaded_on_tensorflow"] - training["test_accuracy_pruned"]) < 0.01
    assert manifest["sparsity"]["overall"] > 0.4
    assert {a["status"] for a in manifest["artifacts"].values()} == {"ok"}
    assert manifest["artifacts"]["tflite-int8"]["top1_agreement"] > 0.9  # the parity check, as on TensorFlow


def test_a_framework_that_is_not_installed_is_named_with_the_fix(tiny_spec, tmp_path: Path, monkeypatch) -> None:
    import nas.framework

    spec = tiny_spec(name="missing")
    spec.write_text(spec.read_text().replace("train:\n", "train:\n  backend: jax\n"))
    monkeypatch.setattr(nas.framework, "installed", lambda name: name != "jax")
    from nas.spec.loader import load_spec

    loaded = load_spec(spec)
    with pytest.raises(NasError) as err:
        nas.framework.require("jax", loaded.where("train.backend"))
    msg = str(err.value)
    assert "missing.yaml:" in msg and "train.backend is 'jax', but jax is not installed" in msg
    assert "pip install 'nas[jax]'" in msg


def test_batches_are_the_same_samples_on_every_framework(digits) -> None:
    import tensorflow as tf  # noqa: F401  (the tf.data path)
    from nas.data import pipeline

    _, splits = digits
    tf_batches = pipeline.train_batches(splits.train, num_classes=10, batch_size=50, seed=4, first_epoch=2)
    np_batches = pipeline._numpy_batches(splits.train, 10, 50, 4, 2)
    it = iter(tf_batches.dataset)
    for _ in range(tf_batches.steps_per_epoch + 2):  # across an epoch boundary
        (x1, y1), (x2, y2) = next(it), next(np_batches)
        np.testing.assert_array_equal(x1.numpy(), x2)
        np.testing.assert_array_equal(y1.numpy(), y2)


def test_a_jax_trial_never_imports_tensorflow_and_compiles_each_step_once(tmp_path: Path) -> None:
    """The JAX and PyTorch paths (data, augmentation, checkpoint, save, evaluate) must run where TensorFlow is
    not installed at all, as on a JAX or PyTorch GPU machine. And XLA compiles the train, test and predict steps
    once each, although no split here divides into whole batches (nas.data.pipeline: whole batches)."""
    script = """
import collections, sys
from pathlib import Path
from nas import framework as fw
fw.prepare(fw.Setup("jax"))
import jax
from jax._src import dispatch
compiles = collections.Counter()
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: compiles.update([kw.get("fun_name")]) if event == dispatch.BACKEND_COMPILE_EVENT else None)
from nas.data import load_source, make_splits
from nas.space import DataInfo, SearchSpace
from nas.spec import parse_spec
from nas.train import evaluate_model, run_trial
from nas.trial import TrialTask
raw = load_source("digits", Path("."))
splits = make_splits(raw, validation_fraction=0.2, test_fraction=0.2, seed=0)
info = DataInfo(splits.input_shape, splits.num_classes, raw.pixel_max, raw.class_names)
spec = parse_spec("name: t\\ndata: {source: digits}\\naugment: {translation: 0.1}\\nspace: {depth: 1, filters: 8}\\n"
                  "train: {learning_rate: 0.01, batch_size: 16}\\n")
out = run_trial(TrialTask(0, SearchSpace(spec).decode({}, info), seed=0, epochs=2, checkpoint_to=sys.argv[1] + "/c.npz",
                          save_model_to=sys.argv[1] + "/m.keras"), splits.without_test(), lambda e, m: "continue")
assert out.state == "finished", out.reason
print("test_accuracy", evaluate_model(out.model_path, splits, ("test",))["test_accuracy"])
print("tensorflow modules", len([m for m in sys.modules if m.split(".")[0] == "tensorflow"]))
print("partial batches", len(splits.train.y) % 16, len(splits.val.y) % 256, len(splits.test.y) % 256)
print("step compiles", sorted((k, v) for k, v in compiles.items() if k.endswith("_step)")))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow modules 0" in proc.stdout, proc.stdout
    assert float(proc.stdout.split("test_accuracy ")[1].split()[0]) > 0.2
    partial = [int(v) for v in proc.stdout.split("partial batches ")[1].split("\n")[0].split()]
    assert all(partial), partial  # train, val and test each end in a partial batch, unpadded
    assert "step compiles [('jit(predict_step)', 1), ('jit(test_step)', 1), ('jit(train_step)', 1)]" in proc.stdout, \
        proc.stdout


# Imported first by every Python process started with this folder on PYTHONPATH: `import tensorflow` fails as if
# TensorFlow were not installed (as on a JAX or PyTorch GPU machine).
NO_TENSORFLOW = '''
import importlib.abc, importlib.machinery, sys


class _NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name.split(".")[0] == "tensorflow" else None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _NoTensorFlow())
'''


@pytest.mark.slow
def test_export_without_tensorflow_gives_keras_and_onnx_and_says_what_needs_tensorflow(tiny_spec,
                                                                                      tmp_path: Path) -> None:
    spec = tiny_spec(name="notf", trials=1, epochs=2)
    spec.write_text(spec.read_text().replace("train:\n", "train:\n  backend: torch\n"))
    proc = subprocess.run([sys.executable, "-m", "nas", "search", str(spec), "--runs-dir", str(tmp_path / "runs")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    blocker = tmp_path / "no_tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "COLUMNS": "200"}
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert "No module named 'tensorflow'" in check.stderr  # the blocker works

    run = tmp_path / "runs" / "notf"
    proc = subprocess.run([sys.executable, "-m", "nas", "export", str(run), "--formats", "keras,onnx,tflite-int8",
                           "--sparsity", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped tflite-int8: they need TensorFlow, which is not installed here; pip install" in proc.stdout
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    art = manifest["artifacts"]
    assert art["keras"]["status"] == "ok" and art["onnx"]["status"] == "ok", art
    assert art["onnx"]["runtime"] == "onnxruntime" and art["onnx"]["top1_agreement"] > 0.95  # parity with Keras
    assert art["tflite-int8"]["status"] == "skipped" and "needs TensorFlow" in art["tflite-int8"]["error"]
    assert (run / "export" / "model.keras").exists() and (run / "export" / "model.onnx").exists()
    assert manifest["training"]["framework"] == "torch"
    assert "test_accuracy_reloaded_on_tensorflow" not in manifest["training"]
