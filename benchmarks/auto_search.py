"""`mmedge quantize --auto` on every target, and NNCF's own accuracy control beside it.

For each model (the reference; the real pretrained tri-modal model of benchmarks/realmodel/ when
its packages are installed) and each target, the search runs for a top-1 agreement gate with
the FP32 export (default 0.99) on the model's eval set. Recorded: the policy chosen, layers left
in float, the gate metric, the chosen build's p50 against full INT8 (interleaved rounds inside
the search), its size against FP32 and full INT8 (the share of full INT8's size saving kept),
and the search's wall time. For OpenVINO, `nncf.quantize_with_accuracy_control` is run on the
same IR, calibration set, validation set and gate (max_drop = 1 - target on agreement), and
measured the same way.

    python -m benchmarks.auto_search [--models reference,realmodel] [--target 0.99]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RECIPES, ROOT, table, write_results

REALMODEL = ROOT / "benchmarks" / "realmodel" / "recipe.yaml"
TARGETS = ("onnxruntime", "openvino", "tensorrt")


def _recipe(name: str, target: float) -> Any:
    from mmedge.recipe import load_recipe

    path = RECIPES.get(name, REALMODEL)
    gate = {"metric": "top1_agreement", "target": target}
    return load_recipe(path, {"quantization.accuracy": gate})


def _realmodel_ready() -> str | None:
    try:
        from benchmarks.realmodel import model  # noqa: F401
    except Exception as err:  # its wheels are not mmedge dependencies
        return f"benchmarks/realmodel needs its packages (see its README): {err}"
    data = ROOT / "runs" / "realmodel"
    if not (data / "eval").is_dir():
        subprocess.run([sys.executable, "-m", "benchmarks.realmodel.data", str(data)], check=True)
    return None


def _search(name: str, target: str, gate: float, tmp: Path, fp32_bytes: int) -> dict[str, Any]:
    from mmedge.artifacts import build_artifact
    from mmedge.errors import AccuracyError

    recipe = _recipe(name, gate)
    out = tmp / f"{name}-{target}"
    full = build_artifact(recipe, target, "int8", tmp / f"{name}-{target}-full", force=True)
    start = time.perf_counter()
    try:
        build_artifact(recipe, target, "int8", out, force=True, auto=True)
    except AccuracyError as err:
        return {"model": name, "target": target, "error": err.message}
    seconds = time.perf_counter() - start
    record = json.loads((out / "search.json").read_text())
    chosen, first = record["chosen"], record["steps"][0]
    full_bytes = full["artifact"]["bytes"]
    kept = (
        (fp32_bytes - chosen["bytes"]) / (fp32_bytes - full_bytes)
        if fp32_bytes > full_bytes
        else None
    )
    return {
        "model": name,
        "target": target,
        "chosen": chosen["name"],
        "float_ops": chosen.get("float_ops", 0),
        "float_layers": chosen["float_layers"],
        "full_int8_metric": first["metric"],
        "metric": chosen["metric"],
        "scores": chosen["scores"],
        "p50_ms": chosen["p50_ms"],
        "full_int8_p50_ms": first["p50_ms"],
        "bytes": chosen["bytes"],
        "full_int8_bytes": full_bytes,
        "fp32_bytes": fp32_bytes,
        "saving_kept": kept,
        "seconds": round(seconds, 1),
        "candidates": len(record["steps"]),
        "branch_sqnr_db": record.get("branch_sqnr_db"),
    }


def _nncf_accuracy_control(name: str, gate: float, tmp: Path, ours: Path | None) -> dict[str, Any]:
    """NNCF's quantize_with_accuracy_control on the same IR, data and gate."""
    import nncf
    import openvino as ov

    from mmedge.artifacts import _fp32_onnx
    from mmedge.data.datasets import open_calibration
    from mmedge.quantize.evaluate import Validation
    from mmedge.quantize.nncf import Samples
    from mmedge.run.latency import interleaved_p50
    from mmedge.targets import SessionConfig
    from mmedge.targets.openvino import OvSession, convert

    recipe = _recipe(name, gate)
    calib = open_calibration(recipe)
    src, _ = _fp32_onnx(recipe, tmp, calib, lambda _: None)
    val = Validation(recipe, src, recipe.bench.threads)
    model = convert(src)
    core = ov.Core()
    feeds = [f for f, _ in val.batches]
    # Items carry their index: NNCF validates subsets (its ranking subset), and each sample's
    # agreement must be taken against that sample's FP32 output.
    singles = [
        {k: v[i : i + 1] for k, v in f.items()}
        for f in feeds
        for i in range(next(iter(f.values())).shape[0])
    ]
    samples = list(enumerate(singles))
    reference = [r[i : i + 1] for r in val.reference for i in range(r.shape[0])]

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        agree = []
        for index, item in items:
            out = compiled(item)[0]
            agree.append(float(out.argmax(-1)[0] == reference[index].argmax(-1)[0]))
        return float(sum(agree) / len(agree)), agree

    start = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(Samples(calib, recipe.calibration.batch if recipe.calibration else 8)),
        nncf.Dataset(samples, lambda item: item[1]),
        validate,
        max_drop=1.0 - gate,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=min(300, calib.samples),
        model_type=nncf.ModelType.TRANSFORMER,
    )
    seconds = time.perf_counter() - start
    xml = tmp / f"{name}-nncf-ac" / "model.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    full = convert(src)
    full_q = nncf.quantize(
        full,
        nncf.Dataset(Samples(calib, 8)),
        subset_size=min(300, calib.samples),
        model_type=nncf.ModelType.TRANSFORMER,
    )
    fq = sum(op.get_type_name() == "FakeQuantize" for op in full_q.get_ops())
    fq_left = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    session = OvSession(xml, recipe, "int8", SessionConfig(recipe.bench.threads))
    scores = val.scores(session.run)
    session.close()
    p50: dict[str, float] = {}
    if ours is not None:
        from mmedge.inputs import dummy_feeds

        bench = dummy_feeds(recipe, "opt", batch=1)
        shapes = {k: v.shape for k, v in bench.items()}
        config = SessionConfig(recipe.bench.threads, static_shapes=shapes)
        sessions = {
            "nncf": OvSession(xml, recipe, "int8", config),
            "mmedge": OvSession(ours, recipe, "int8", config),
        }
        rounds = interleaved_p50({k: (s.prepare(bench), 20) for k, s in sessions.items()}, 5, 0.5)
        p50 = {k: statistics.median(v) for k, v in rounds.items()}
        for s in sessions.values():
            s.close()
    del core
    return {
        "model": name,
        "seconds": round(seconds, 1),
        "top1_agreement": scores.top1_agreement,
        "sqnr_db": scores.sqnr_db,
        "fake_quantize_full": fq,
        "fake_quantize_left": fq_left,
        "bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
        "p50_ms_vs_mmedge": p50,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="reference,realmodel")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--target", type=float, default=0.99)
    # NNCF's accuracy control re-ranks every quantizer on the validation set after each revert:
    # about a minute on the reference model, far longer than this machine allows on a 24 M one.
    parser.add_argument("--nncf-models", default="reference")
    args = parser.parse_args()
    from mmedge.artifacts import build_artifact

    results: list[dict[str, Any]] = []
    nncf_ac: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for model in args.models.split(","):
            if model == "realmodel" and (why := _realmodel_ready()):
                notes.append(why)
                continue
            recipe = _recipe(model, args.target)
            fp32 = build_artifact(recipe, "onnxruntime", "fp32", tmp / f"{model}-fp32", force=True)
            for target in args.targets.split(","):
                results.append(_search(model, target, args.target, tmp, fp32["artifact"]["bytes"]))
                _report(args.target, results, nncf_ac, notes)  # written as it goes
            if "openvino" in args.targets and model in args.nncf_models.split(","):
                ours = tmp / f"{model}-openvino" / "model.xml"
                found = ours if ours.is_file() else None
                nncf_ac.append(_nncf_accuracy_control(model, args.target, tmp, found))
                _report(args.target, results, nncf_ac, notes)


def _report(
    gate: float, results: list[dict[str, Any]], nncf_ac: list[dict[str, Any]], notes: list[str]
) -> None:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    rows = []
    for r in results:
        if "error" in r:
            rows.append(
                [r["model"], r["target"], "gate not reached: " + r["error"][:120], *["-"] * 6]
            )
            continue
        speed = (
            f"{r['full_int8_p50_ms'] / r['p50_ms']:.2f}x"
            if r["p50_ms"] and r["full_int8_p50_ms"]
            else "not timed"
        )
        rows.append(
            [
                r["model"],
                r["target"],
                r["chosen"],
                str(r["float_ops"]),
                f"{pct(r['full_int8_metric'])} → {pct(r['metric'])}",
                speed,
                f"{r['bytes'] / 1e6:.2f} MB ({pct(r['saving_kept'])} of the saving)",
                f"{r['seconds']:.0f} s",
                str(r["candidates"]),
            ]
        )
    markdown = f"Gate: top-1 agreement ≥ {gate} with the FP32 export on the eval set.\n\n" + table(
        [
            "model",
            "target",
            "chosen policy",
            "ops in float",
            "agreement full INT8 → chosen",
            "p50 full INT8 / chosen",
            "size",
            "search time",
            "candidates",
        ],
        rows,
    )
    if nncf_ac:
        markdown += "\n`nncf.quantize_with_accuracy_control`, same IR, data and gate:\n\n" + table(
            [
                "model",
                "agreement",
                "FakeQuantize kept / full",
                "MB",
                "time",
                "p50 NNCF-AC / mmedge",
            ],
            [
                [
                    n["model"],
                    pct(n["top1_agreement"]),
                    f"{n['fake_quantize_left']} / {n['fake_quantize_full']}",
                    f"{n['bytes'] / 1e6:.2f}",
                    f"{n['seconds']:.0f} s",
                    " / ".join(f"{v:.3f} ms" for v in n["p50_ms_vs_mmedge"].values()) or "-",
                ]
                for n in nncf_ac
            ],
        )
    if notes:
        markdown += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    write_results(
        "auto_search",
        {"gate": gate, "results": results, "nncf_accuracy_control": nncf_ac, "notes": notes},
        markdown,
    )


if __name__ == "__main__":
    main()
