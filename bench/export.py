"""Export quality bars on Fashion-MNIST (issue 4); a benchmark, not a test. Needs `make data`.

Runs a one-trial search with a fixed mid-size CNN, then `nas export` twice: dense (sparsity 0) and 80%
sparse, and checks:
  int8 TFLite size <= 0.26x float32 TFLite; int8 test-accuracy drop <= 0.5 pp vs float TFLite
  80% sparse + fine-tuned: accuracy drop <= 1 pp; sparse+int8 gzip <= 0.12x the dense float32 gzip
  int8 batch-1 latency <= 0.5x the Keras float model
  ONNX and float TFLite top-1 agreement with Keras >= 99.9%

    .venv/bin/python bench/export.py [--epochs 6] [--workdir /tmp/nas-bench-export]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = """name: fashion_bench
data: {{source: "idx:{data}", validation_fraction: 0.1}}
augment: {{flip: horizontal, translation: 0.05, fill_mode: constant}}
space:
  depth: 3
  filters: {{base: 32, growth: 2.0}}
  convs_per_block: 1
  pooling: max
  dropout: 0.1
  head: {{type: gap, depth: 1, width: 128}}
train: {{epochs: {epochs}, batch_size: 128, learning_rate: 2e-3, optimizer: adam}}
search: {{trials: 1, pruner: none, seed: 0}}
export: {{retrain_epochs: {epochs}, finetune_epochs: {finetune}}}
"""


def nas(*args: object) -> None:
    r = subprocess.run([sys.executable, "-m", "nas", *map(str, args)], text=True)
    if r.returncode:
        sys.exit(f"nas {' '.join(map(str, args))} failed with {r.returncode}")


def check(label: str, value: float, goal: str, ok: bool) -> bool:
    print(f"  {'PASS' if ok else 'FAIL'}  {label:<52} {value:>9.4f}  (goal {goal})")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--finetune", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nas-bench-export"))
    args = ap.parse_args()
    data = REPO / "data" / "fashion-mnist"
    if not data.exists():
        sys.exit("no data/fashion-mnist: run `make data` first")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    spec = args.workdir / "fashion_bench.yaml"
    spec.write_text(SPEC.format(data=data, epochs=args.epochs, finetune=args.finetune))
    runs = args.workdir / "runs"
    nas("search", spec, "--runs-dir", runs)
    run = runs / "fashion_bench"
    nas("export", run, "--sparsity", "0")
    dense = json.loads((run / "export" / "manifest.json").read_text())
    shutil.copytree(run / "export", args.workdir / "export_dense")
    nas("export", run, "--sparsity", "0.8")
    sparse = json.loads((run / "export" / "manifest.json").read_text())

    d, s = dense["artifacts"], sparse["artifacts"]
    ref = dense["keras_reference"]
    print(f"\nFashion-MNIST, fixed CNN, {args.epochs} epochs (retrained on train+val), "
          f"{len(dense['input']['class_names'])} classes, test split {dense['source']['data']}")
    print(f"dense  Keras test accuracy {ref['test_accuracy']:.4f}, batch-1 latency {ref['latency_ms_median']:.3f} ms")
    print(f"sparse retrained {sparse['training']['test_accuracy_retrained']:.4f} -> pruned "
          f"{sparse['training']['test_accuracy_pruned']:.4f} at {sparse['sparsity']['overall']:.1%} zeros")
    for name in d:
        for label, m in (("dense", d), ("sparse", s)):
            a = m[name]
            if a["status"] == "ok":
                print(f"  {label:<6} {name:<15} acc {a['test_accuracy']:.4f}  agree {a['top1_agreement'] or 1:.4f}  "
                      f"{a['bytes'] / 1024:8.1f} KB  gzip {a['gzip_bytes'] / 1024:8.1f} KB  {a['latency_ms_median']:.3f} ms")
            else:
                print(f"  {label:<6} {name:<15} FAILED {a['error'][:100]}")
    print()
    ok = all([
        check("int8 size / float32 TFLite size", d["tflite-int8"]["bytes"] / d["tflite-float32"]["bytes"], "<= 0.26",
              d["tflite-int8"]["bytes"] / d["tflite-float32"]["bytes"] <= 0.26),
        check("int8 accuracy drop vs float TFLite (pp)",
              100 * (d["tflite-float32"]["test_accuracy"] - d["tflite-int8"]["test_accuracy"]), "<= 0.5",
              100 * (d["tflite-float32"]["test_accuracy"] - d["tflite-int8"]["test_accuracy"]) <= 0.5),
        check("80% sparse fine-tuned accuracy drop (pp)",
              100 * (sparse["training"]["test_accuracy_retrained"] - sparse["training"]["test_accuracy_pruned"]), "<= 1",
              100 * (sparse["training"]["test_accuracy_retrained"] - sparse["training"]["test_accuracy_pruned"]) <= 1),
        check("sparse int8 gzip / dense float32 gzip", s["tflite-int8"]["gzip_bytes"] / d["tflite-float32"]["gzip_bytes"],
              "<= 0.12", s["tflite-int8"]["gzip_bytes"] / d["tflite-float32"]["gzip_bytes"] <= 0.12),
        check("int8 latency / Keras float latency", d["tflite-int8"]["latency_ms_median"] / ref["latency_ms_median"],
              "<= 0.5", d["tflite-int8"]["latency_ms_median"] / ref["latency_ms_median"] <= 0.5),
        check("ONNX top-1 agreement with Keras", d["onnx"]["top1_agreement"], ">= 0.999", d["onnx"]["top1_agreement"] >= 0.999),
        check("float TFLite top-1 agreement with Keras", d["tflite-float32"]["top1_agreement"], ">= 0.999",
              d["tflite-float32"]["top1_agreement"] >= 0.999),
    ])
    print("all quality bars met" if ok else "some quality bars missed")


if __name__ == "__main__":
    main()
