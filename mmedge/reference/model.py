"""The reference tri-modal fusion classifier: what real fusion models are made of, at two sizes.

- ``image_encoder``: Conv2d + BatchNorm + ReLU stages, global pooling, projection.
- ``text_encoder``: token + position embeddings, pre-LayerNorm transformer blocks with
  transformers-style attention (``q_proj``/``k_proj``/``v_proj``/``out_proj``), int64 token ids
  and an int64 attention mask, masked mean pooling.
- ``audio_encoder``: Conv1d stages over log-mel frames, masked-free mean pooling over time.
- ``head``: concatenation of the three embeddings (the fusion point) and an MLP classifier.

Attention reshapes with ``-1`` for the head width so a head-pruned copy still runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class FusionConfig:
    classes: int = 10
    embed_dim: int = 64
    hidden: int = 128
    image_channels: int = 1
    # (out_channels, stride) per conv stage.
    image_stages: tuple[tuple[int, int], ...] = ((16, 1), (32, 2), (64, 2), (64, 2))
    vocab: int = 128
    max_len: int = 64
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    audio_mels: int = 32
    audio_stages: tuple[tuple[int, int, int], ...] = field(
        default=((64, 5, 1), (64, 5, 2), (64, 3, 2))  # (out_channels, kernel, stride)
    )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


LARGE = FusionConfig(
    classes=10,
    embed_dim=256,
    hidden=512,
    image_channels=3,
    image_stages=((32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)),
    vocab=8192,
    max_len=128,
    text_dim=384,
    text_layers=6,
    text_heads=6,
    text_ff=1536,
    audio_mels=64,
    audio_stages=((128, 5, 1), (128, 5, 2), (256, 3, 2), (256, 3, 1)),
)


def _conv_stages(
    conv: type[nn.Conv1d | nn.Conv2d],
    norm: type[nn.BatchNorm1d | nn.BatchNorm2d],
    channels: int,
    stages: tuple[tuple[int, int, int], ...],
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU per (out_channels, kernel, stride) stage."""
    layers: list[nn.Module] = []
    for out, kernel, stride in stages:
        layers += [
            conv(channels, out, kernel, stride=stride, padding=kernel // 2, bias=False),
            norm(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        stages = tuple((out, 3, stride) for out, stride in cfg.image_stages)
        self.features = _conv_stages(nn.Conv2d, nn.BatchNorm2d, cfg.image_channels, stages)
        self.proj = nn.Linear(cfg.image_stages[-1][0], cfg.embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(image).mean(dim=(2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # (b, s, heads, head_dim) → (b, heads, s, head_dim); head_dim from -1 survives pruning.
        q = self.q_proj(x).reshape(b, s, self.num_heads, -1).transpose(1, 2)
        k = self.k_proj(x).reshape(b, s, self.num_heads, -1).transpose(1, 2)
        v = self.v_proj(x).reshape(b, s, self.num_heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        context = torch.softmax(scores, dim=-1) @ v
        return self.out_proj(context.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.ff(self.norm2(x))


class TextEncoder(nn.Module):
    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab, cfg.text_dim)
        self.positions = nn.Embedding(cfg.max_len, cfg.text_dim)
        self.layers = nn.ModuleList(
            Block(cfg.text_dim, cfg.text_heads, cfg.text_ff) for _ in range(cfg.text_layers)
        )
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.proj = nn.Linear(cfg.text_dim, cfg.embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Position ids through the module (not positions.weight[:S]): pruning tools follow
        # module calls, and a parameter used outside its module's forward is left unpruned.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        mask = attention_mask.to(x.dtype)
        # -1e4, not -inf: a fully padded row stays finite, and the value fits FP16.
        bias = (1.0 - mask)[:, None, None, :] * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        x = self.norm(x)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.proj(pooled)


class AudioEncoder(nn.Module):
    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.features = _conv_stages(nn.Conv1d, nn.BatchNorm1d, cfg.audio_mels, cfg.audio_stages)
        self.proj = nn.Linear(cfg.audio_stages[-1][0], cfg.embed_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(audio).mean(dim=2))


class FusionHead(nn.Module):
    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3 * cfg.embed_dim, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(0.1)
        )
        self.classifier = nn.Linear(cfg.hidden, cfg.classes)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mlp(fused))


class FusionNet(nn.Module):
    """Inputs: ``image`` (B,C,H,W), ``input_ids`` and ``attention_mask`` (B,S) int64,
    ``audio`` (B,mels,T) log-mel. Output: class logits (B, classes)."""

    def __init__(self, cfg: FusionConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or FusionConfig()
        self.image_encoder = ImageEncoder(self.config)
        self.text_encoder = TextEncoder(self.config)
        self.audio_encoder = AudioEncoder(self.config)
        self.head = FusionHead(self.config)

    def embeddings(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return {
            "image": self.image_encoder(image),
            "text": self.text_encoder(input_ids, attention_mask),
            "audio": self.audio_encoder(audio),
        }

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        parts = self.embeddings(image, input_ids, attention_mask, audio)
        return self.head(torch.cat([parts["image"], parts["text"], parts["audio"]], dim=1))


def reference_model() -> FusionNet:
    """The small reference model (weights in ``mmedge/reference/weights``)."""
    return FusionNet(FusionConfig())


def reference_large(seed: int = 0) -> FusionNet:
    """Edge-realistic sizes with seeded random weights, for latency and size work."""
    torch.manual_seed(seed)
    model = FusionNet(LARGE)
    _estimate_norm_stats(model, seed)
    return model


def _estimate_norm_stats(model: FusionNet, seed: int, batch: int = 4) -> None:
    # Untrained BatchNorm layers hold mean 0 / var 1, so activations drift in scale from stage
    # to stage. A few train-mode passes on random inputs give them real statistics, so the
    # random network's activations are normalized like a trained one's (quantization ranges
    # and parity figures on it then mean something).
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for _ in range(2):
            ids = torch.randint(0, cfg.vocab, (batch, 32), generator=gen)
            model(
                torch.randn(batch, cfg.image_channels, 96, 96, generator=gen),
                ids,
                torch.ones_like(ids),
                torch.randn(batch, cfg.audio_mels, 100, generator=gen),
            )
    for norm in norms:
        norm.momentum = 0.1
    model.eval()
