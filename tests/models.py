"""Tiny fusion models built in code, for mechanics tests (each runs in milliseconds).

The well-behaved one is the reference architecture at toy size; the others each break one rule
a user's model can break.
"""

from __future__ import annotations

import torch
from torch import nn

from mmedge.reference.model import FusionConfig, FusionNet

TINY = FusionConfig(
    classes=5,
    embed_dim=8,
    hidden=16,
    image_channels=1,
    image_stages=((4, 1), (8, 2)),
    vocab=16,
    max_len=16,
    text_dim=8,
    text_layers=1,
    text_heads=2,
    text_ff=16,
    audio_mels=4,
    audio_stages=((8, 3, 1), (8, 3, 2)),
)


def tiny_fusion(seed: int = 0) -> FusionNet:
    torch.manual_seed(seed)
    return FusionNet(TINY)


def not_a_module() -> object:
    return {"weights": [1, 2, 3]}


def failing_factory() -> nn.Module:
    raise RuntimeError("CUDA driver not found")


class BakedFrames(FusionNet):
    """Divides by the frame count as a Python number: tracing bakes the traced size in."""

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        logits = super().forward(image, input_ids, attention_mask, audio)
        frames = float(audio.shape[2])  # a Python float: a constant in a traced graph
        return logits + audio.sum(dim=(1, 2))[:, None] / frames


def baked_frames() -> FusionNet:
    torch.manual_seed(0)
    return BakedFrames(TINY)


class Unexportable(FusionNet):
    """Uses an operator that neither ONNX exporter can translate."""

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        logits = super().forward(image, input_ids, attention_mask, audio)
        square = image[:, 0, :4, :4] @ image[:, 0, :4, :4].transpose(-1, -2)
        return logits + torch.linalg.eigvals(square).real.sum(dim=1, keepdim=True)


def unexportable() -> FusionNet:
    torch.manual_seed(0)
    return Unexportable(TINY)


class TwoInputs(nn.Module):
    """Its forward takes (image, tokens): not the four inputs the tiny recipe declares."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 5)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(image.flatten(1)) + tokens.float().mean()


def two_inputs() -> nn.Module:
    return TwoInputs()


class DataDependentBranch(FusionNet):
    """Python control flow on a tensor's value: torch.export refuses it, tracing takes one path."""

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        logits = super().forward(image, input_ids, attention_mask, audio)
        if audio.abs().max() > 1e6:  # never true for real inputs
            return logits * 0
        return logits


def data_dependent_branch() -> FusionNet:
    torch.manual_seed(0)
    return DataDependentBranch(TINY)


class MhaText(nn.Module):
    """A text branch built on nn.MultiheadAttention (PyTorch's own attention module)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(16, 8)
        self.attn = nn.MultiheadAttention(8, num_heads=2, batch_first=True)
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids)
        x, _ = self.attn(x, x, x, key_padding_mask=attention_mask == 0, need_weights=False)
        mask = attention_mask.to(x.dtype)[..., None]
        return self.proj((x * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def tiny_mha() -> FusionNet:
    torch.manual_seed(0)
    model = FusionNet(TINY)
    model.text_encoder = MhaText()  # type: ignore[assignment]
    return model


class DirectParameterText(nn.Module):
    """Reads a module's parameter without calling the module (self.positions.weight[:n])."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(16, 8)
        self.positions = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.positions.weight[: input_ids.shape[1]]
        mask = attention_mask.to(x.dtype)[..., None]
        return self.proj((x * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def direct_parameter() -> FusionNet:
    torch.manual_seed(0)
    model = FusionNet(TINY)
    model.text_encoder = DirectParameterText()  # type: ignore[assignment]
    return model


class FixedWidth(nn.Module):
    """Reshapes with a channel count written into the code: pruning cannot change it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 8, -1).mean(2)


class FixedWidthImage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = FixedWidth()
        self.proj = nn.Linear(8, 8)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(torch.relu(self.conv(image))))


def fixed_width() -> FusionNet:
    torch.manual_seed(0)
    model = FusionNet(TINY)
    model.image_encoder = FixedWidthImage()  # type: ignore[assignment]
    return model


class ClipStyleText(nn.Module):
    """A positional embedding as a bare nn.Parameter (CLIP's style), which Torch-Pruning can
    follow as an 'unwrapped' parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(16, 8)
        self.positional_embedding = nn.Parameter(torch.randn(16, 8) * 0.02)
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.positional_embedding[: input_ids.shape[1]]
        mask = attention_mask.to(x.dtype)[..., None]
        return self.proj((x * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def clip_style() -> FusionNet:
    torch.manual_seed(0)
    model = FusionNet(TINY)
    model.text_encoder = ClipStyleText()  # type: ignore[assignment]
    return model


class OutlierAudioEncoder(nn.Module):
    """The tiny audio branch with one pooled feature scaled up 1000x before its projection and
    that weight column scaled down 1000x: the same function in FP32, but per-tensor INT8 of
    the projection's input spends its whole range on that feature and rounds the others away."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.features = inner.features
        self.proj = inner.proj
        scale = torch.ones(self.proj.in_features)
        scale[0] = 1000.0
        self.register_buffer("scale", scale)
        with torch.no_grad():
            self.proj.weight[:, 0] /= 1000.0

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(audio).mean(dim=2) * self.scale)


def outlier_audio() -> FusionNet:
    torch.manual_seed(0)
    model = FusionNet(TINY)
    model.audio_encoder = OutlierAudioEncoder(model.audio_encoder)  # type: ignore[assignment]
    return model


class FragileHead(nn.Module):
    """A fusion head one of whose layers cannot be quantized: its input mixes features of
    size ~1 with one feature spanning 0..1000, and both matter. Per-tensor INT8 over the full
    range rounds the small features away; any clipped range (percentile, entropy) cuts the
    large one; no type or placement switch helps. Only this layer in float is accurate."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.spread = nn.Linear(width, 8)
        self.gain = nn.Linear(width, 1)
        self.fragile = nn.Linear(9, classes)
        with torch.no_grad():
            self.fragile.weight[:, 8] = torch.linspace(-1e-2, 1e-2, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        small = torch.relu(self.spread(features))
        large = 1000.0 * torch.sigmoid(4.0 * self.gain(features))
        return self.fragile(torch.cat([small, large], dim=1))  # type: ignore[no-any-return]


class FragileFusion(nn.Module):
    """Tiny tri-modal model whose fusion head has one deliberately fragile layer."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.text_encoder = nn.Embedding(16, 4)
        self.audio_encoder = nn.Sequential(
            nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten()
        )
        self.head = FragileHead(12, 5)

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        text = (self.text_encoder(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        fused = torch.cat([self.image_encoder(image), text, self.audio_encoder(audio)], dim=1)
        return self.head(fused)  # type: ignore[no-any-return]


def fragile_fusion() -> FragileFusion:
    torch.manual_seed(0)
    return FragileFusion()


class ChannelLastAudio(nn.Module):
    """An audio CNN whose output is flattened channel-last straight into the fusion concat (the
    audit's CREPE-style branch): Torch-Pruning maps the flatten as channel-first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(audio)))
        return x.permute(0, 2, 1).reshape(x.shape[0], -1)  # [b, 2 * 4]: time-major


def channel_last_audio() -> FusionNet:
    torch.manual_seed(0)
    model = FusionNet(TINY)
    model.audio_encoder = ChannelLastAudio()  # type: ignore[assignment]
    return model
