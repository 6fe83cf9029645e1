"""Reproduce the shipped reference weights and data: ``python -m mmedge.reference.train``.

Every epoch draws fresh corruptions of the training scans, so the model sees new audio, text and
image noise each time. A linear probe per branch (trained on the same embeddings, not part of
the model) measures what each modality achieves alone; the fused model must beat all of them.
Takes about 90 seconds on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmedge.reference import data
from mmedge.reference.model import FusionNet, reference_model

WEIGHTS = Path(__file__).with_name("weights") / "reference.safetensors"
REPO = Path(__file__).resolve().parents[2]
CALIB_SAMPLES, EVAL_SAMPLES, SHARD = 256, 540, 64


def _batches(
    split: data.Split, batch: int, rng: np.random.Generator
) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    order = rng.permutation(len(split.labels))
    out = []
    for k, start in enumerate(range(0, len(order), batch)):
        seq, frames = data.SHARD_SHAPES[k % len(data.SHARD_SHAPES)]
        feeds, y = data.make_batch(split, order[start : start + batch], seq, frames, rng)
        out.append(({n: torch.from_numpy(v) for n, v in feeds.items()}, torch.from_numpy(y)))
    return out


def _step_loss(
    model: FusionNet, probes: nn.ModuleDict, feeds: dict[str, torch.Tensor], y: torch.Tensor
) -> torch.Tensor:
    parts = model.embeddings(**feeds)
    logits = model.head(torch.cat([parts["image"], parts["text"], parts["audio"]], dim=1))
    # Probes read detached embeddings: they measure the branches without shaping them.
    probe_loss = sum(F.cross_entropy(probes[b](e.detach()), y) for b, e in parts.items())
    return F.cross_entropy(logits, y) + probe_loss


@torch.no_grad()
def evaluate(
    model: FusionNet,
    probes: nn.ModuleDict,
    batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
) -> dict[str, float]:
    model.eval()
    probes.eval()
    hits = {"fused": 0, "image": 0, "text": 0, "audio": 0}
    total = 0
    for feeds, y in batches:
        parts = model.embeddings(**feeds)
        hits["fused"] += int((model(**feeds).argmax(1) == y).sum())
        for b, e in parts.items():
            hits[b] += int((probes[b](e).argmax(1) == y).sum())
        total += len(y)
    return {k: round(100.0 * v / total, 2) for k, v in hits.items()}


def train(epochs: int, seed: int) -> tuple[FusionNet, dict[str, object]]:
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    model = reference_model()
    dim = model.config.embed_dim
    probes = nn.ModuleDict(
        {b: nn.Linear(dim, model.config.classes) for b in ("image", "text", "audio")}
    )
    opt = torch.optim.AdamW([*model.parameters(), *probes.parameters()], lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * 20)
    train_split, heldout = data.split("train"), data.split("heldout")
    val = _batches(heldout, 128, np.random.default_rng(seed + 1))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        probes.train()
        for feeds, y in _batches(train_split, 64, rng)[:20]:
            opt.zero_grad()
            _step_loss(model, probes, feeds, y).backward()
            opt.step()
            sched.step()
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(
                f"epoch {epoch + 1}: held-out accuracy {evaluate(model, probes, val)}", flush=True
            )
    seconds = time.perf_counter() - start
    model.eval()
    info = {
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "heldout_accuracy": evaluate(model, probes, val),
    }
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=REPO / "calibration",
        help="where reference/ (calibration) and reference-eval/ are written",
    )
    parser.add_argument("--data-only", action="store_true", help="write the data sets only")
    args = parser.parse_args()
    if not args.data_only:
        from safetensors.torch import save_file

        model, info = train(args.epochs, args.seed)
        args.weights.parent.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(args.weights))
        meta = {**info, "config": model.config.to_dict(), "torch": torch.__version__}
        args.weights.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(info))
    data.write_shards(
        args.data_root / "reference",
        data.split("train"),
        CALIB_SAMPLES,
        SHARD,
        seed=1000 + args.seed,
        labels=False,
    )
    data.write_shards(
        args.data_root / "reference-eval",
        data.split("heldout"),
        EVAL_SAMPLES,
        SHARD,
        seed=2000 + args.seed,
        labels=True,
    )


if __name__ == "__main__":
    main()
