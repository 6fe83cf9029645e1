"""Does one INT8 artifact agree with FP32 on every x86 CPU class? (reference, unpruned and pruned)

ONNX Runtime picks its INT8 kernels from the CPU it runs on (CPUID). On x86 without VNNI its
u8 x s8 kernels use VPMADDUBSW, whose 16-bit pair sums saturate. This script builds the
reference model's ONNX Runtime INT8 artifact with each type policy (and with what
`quantization.isa` picks for an AVX2 and a VNNI CPU), then measures top-1 agreement and SQNR
with the FP32 export on the 540-sample eval split twice: natively, and under QEMU's user-mode
emulator with `-cpu Haswell` (AVX2, no VNNI, no AVX-512), where ONNX Runtime dispatches its
AVX2 kernels as on a real AVX2-only CPU. The emulated run is a numerical check only (no
timing). Needs `qemu-user` (Debian: apt-get install qemu-user); without it only the native
column is measured.

    python -m benchmarks.isa_types [--skip-pruned]
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RECIPES, table, write_results

POLICIES: dict[str, dict[str, Any]] = {
    "U8S8 (ORT default)": {
        "quantization.activation_type": "uint8",
        "quantization.weight_type": "int8",
    },
    "S8S8": {"quantization.activation_type": "int8", "quantization.weight_type": "int8"},
    "U8S8 reduce_range": {
        "quantization.activation_type": "uint8",
        "quantization.weight_type": "int8",
        "quantization.reduce_range": True,
    },
    "U8U8": {"quantization.activation_type": "uint8", "quantization.weight_type": "uint8"},
    "isa: x86-vnni": {"quantization.isa": "x86-vnni"},
    "isa: x86-avx2": {"quantization.isa": "x86-avx2"},
}
EMULATED_CPU = "Haswell"


def agreement(fp32: str, int8: str, data: str) -> dict[str, float]:
    """Top-1 agreement and logits SQNR of ``int8`` against ``fp32`` on every shard in ``data``."""
    import onnxruntime as ort

    from mmedge.compare import sqnr_db

    def session(path: str) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 3
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    f, q = session(fp32), session(int8)
    names = [i.name for i in f.get_inputs()]
    refs, cands = [], []
    for shard in sorted(glob.glob(f"{data}/*.npz")):
        arrays = np.load(shard)
        feeds = {k: arrays[k] for k in names}
        refs.append(f.run(None, feeds)[0])
        cands.append(q.run(None, feeds)[0])
    ref, cand = np.concatenate(refs), np.concatenate(cands)
    return {
        "top1_agreement": float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
        "sqnr_db": sqnr_db(ref, cand),
        "samples": int(ref.shape[0]),
    }


def _measure(fp32: Path, int8: Path, data: Path, emulate: bool) -> dict[str, float] | None:
    cmd = [sys.executable, "-m", "benchmarks.isa_types", "--agree", str(fp32), str(int8), str(data)]
    if emulate:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            return None
        cmd = [qemu, "-cpu", EMULATED_CPU, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _variants(recipe_path: Path, label: str, tmp: Path) -> list[dict[str, Any]]:
    from mmedge.artifacts import build_artifact
    from mmedge.recipe import load_recipe

    fp32_dir = tmp / f"{label}-fp32"
    build_artifact(load_recipe(recipe_path), "onnxruntime", "fp32", fp32_dir, force=True)
    recipe = load_recipe(recipe_path)
    assert recipe.eval is not None
    found = []
    for name, overrides in POLICIES.items():
        out = tmp / f"{label}-int8"
        manifest = build_artifact(
            load_recipe(recipe_path, overrides), "onnxruntime", "int8", out, force=True
        )
        types = manifest["steps"]["build"]["int8_types"]
        native = _measure(fp32_dir / "model.onnx", out / "model.onnx", recipe.eval.path, False)
        emulated = _measure(fp32_dir / "model.onnx", out / "model.onnx", recipe.eval.path, True)
        found.append(
            {
                "model": label,
                "policy": name,
                "types": f"{types['activation_type']}/{types['weight_type']}"
                + (" reduce_range" if types["reduce_range"] else ""),
                "native": native,
                "emulated_avx2": emulated,
            }
        )
        print(found[-1], flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-pruned", action="store_true")
    parser.add_argument("--agree", nargs=3, metavar=("FP32", "INT8", "DATA"))
    args = parser.parse_args()
    if args.agree:
        print(json.dumps(agreement(*args.agree)))
        return
    from mmedge.prune.artifact import prune_artifact
    from mmedge.recipe import load_recipe

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        results += _variants(RECIPES["reference"], "reference", tmp)
        if not args.skip_pruned:
            prune_artifact(load_recipe(RECIPES["reference"]), tmp / "pruned", force=True)
            results += _variants(tmp / "pruned" / "recipe.yaml", "reference, pruned", tmp)

    def cell(m: dict[str, float] | None) -> str:
        return "-" if m is None else f"{100 * m['top1_agreement']:.2f}% / {m['sqnr_db']:.1f} dB"

    rows = [
        [r["model"], r["policy"], r["types"], cell(r["native"]), cell(r["emulated_avx2"])]
        for r in results
    ]
    markdown = (
        "Top-1 agreement / logits SQNR of ONNX Runtime INT8 against the FP32 export, eval split "
        f"(540 samples). 'this CPU': natively; 'AVX2 (emulated)': the same file under "
        f"`qemu-x86_64 -cpu {EMULATED_CPU}` (ONNX Runtime's AVX2 kernels, no VNNI).\n\n"
        + table(["model", "policy", "types (act/weight)", "this CPU", "AVX2 (emulated)"], rows)
    )
    write_results("isa_types", {"emulated_cpu": EMULATED_CPU, "results": results}, markdown)


if __name__ == "__main__":
    main()
