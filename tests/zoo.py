"""A model zoo: real architectures at toy size, wired into multimodal fusion models as users do.

Each entry is a fusion ``nn.Module`` built from transformers configs (random weights, seeded, no
downloads) or plain PyTorch layers, plus the recipe pieces that describe it (``ZOO``).
``zoo_recipe`` writes a complete recipe with calibration and eval shards for any entry, so a test
matrix can run every entry through every command. Every model runs a forward in milliseconds.

Conventions: ``forward`` takes the named inputs as keyword parameters and returns logits
[batch, 5]; top-level submodules are named per branch (``text_encoder``, ``image_encoder``,
``audio_encoder``, ``face_encoder``) and the fusion (projections, gates, cross-attention, MLP)
lives under ``head``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

CLASSES = 5


# ----------------------------------------------------------------------------- fusion heads


class ConcatHead(nn.Module):
    """Late fusion: concatenated branch embeddings through an MLP."""

    def __init__(self, widths: list[int], hidden: int = 32, classes: int = CLASSES) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(sum(widths), hidden), nn.ReLU(), nn.Dropout(0.1))
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mlp(torch.cat(features, dim=-1)))


class GatedHead(nn.Module):
    """Learned weighted sum: each branch projected to a common width, softmax gates computed by a
    Linear on the concatenated (unprojected) features, weighted sum, MLP."""

    def __init__(
        self, widths: list[int], dim: int = 16, hidden: int = 32, classes: int = CLASSES
    ) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(width, dim) for width in widths)
        self.gate = nn.Linear(sum(widths), len(widths))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        gates = torch.softmax(self.gate(torch.cat(features, dim=-1)), dim=-1)  # [b, branches]
        projected = torch.stack([p(f) for p, f in zip(self.proj, features, strict=True)], dim=1)
        fused = (gates.unsqueeze(-1) * projected).sum(dim=1)
        return self.classifier(self.mlp(fused))


class CrossAttentionHead(nn.Module):
    """Deep fusion: query tokens attend to context tokens of another width (kdim/vdim), residual
    + LayerNorm, mean over query tokens, MLP."""

    def __init__(
        self, dim: int, context_dim: int, heads: int = 2, hidden: int = 32, classes: int = CLASSES
    ) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(
            dim, heads, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(query, context, context, need_weights=False)
        x = self.norm(query + attended)
        return self.classifier(self.mlp(x.mean(dim=1)))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# ----------------------------------------------------------------------------- 1. BERT + ViT


class BertVitConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel, ViTConfig, ViTModel

        self.text_encoder = BertModel(
            BertConfig(
                vocab_size=32,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=16,
                type_vocab_size=2,
            )
        )
        self.image_encoder = ViTModel(
            ViTConfig(
                image_size=16,
                patch_size=8,
                num_channels=3,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
            )
        )
        self.head = ConcatHead([16, 16])

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
    ) -> torch.Tensor:
        text = self.text_encoder(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        ).pooler_output
        image = self.image_encoder(pixel_values=pixel_values).pooler_output
        return self.head(text, image)


def bert_vit_concat() -> nn.Module:
    torch.manual_seed(0)
    return BertVitConcat().eval()


# ----------------------------------------------------------------------------- 2. DistilBERT + wav2vec2


class DistilbertWav2vec2Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import DistilBertConfig, DistilBertModel, Wav2Vec2Config, Wav2Vec2Model

        self.text_encoder = DistilBertModel(
            DistilBertConfig(
                vocab_size=32,
                dim=16,
                n_layers=1,
                n_heads=2,
                hidden_dim=32,
                max_position_embeddings=16,
            )
        )
        # Two feature-extractor convs (kernel 10 stride 5, kernel 3 stride 2): one frame per
        # 10 samples; group norm on the first conv as in wav2vec2-base.
        self.audio_encoder = Wav2Vec2Model(
            Wav2Vec2Config(
                hidden_size=24,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                conv_dim=(8, 8),
                conv_stride=(5, 2),
                conv_kernel=(10, 3),
                num_conv_pos_embeddings=4,
                num_conv_pos_embedding_groups=2,
                feat_extract_norm="group",
                do_stable_layer_norm=False,
                apply_spec_augment=False,
            )
        )
        self.head = GatedHead([16, 24])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, waveform: torch.Tensor
    ) -> torch.Tensor:
        tokens = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        text = _masked_mean(tokens, attention_mask)
        audio = self.audio_encoder(input_values=waveform).last_hidden_state.mean(dim=1)
        return self.head(text, audio)


def distilbert_wav2vec2_gated() -> nn.Module:
    torch.manual_seed(0)
    return DistilbertWav2vec2Gated().eval()


# ----------------------------------------------------------------------------- 3. CLIP + Whisper

WHISPER_MELS = 8
WHISPER_POSITIONS = 8  # the encoder demands exactly 2 * max_source_positions frames


class ClipWhisperCrossAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel, WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                image_size=16,
                patch_size=8,
                num_channels=3,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                projection_dim=16,
            )
        )
        self.audio_encoder = WhisperEncoder(
            WhisperConfig(
                num_mel_bins=WHISPER_MELS,
                d_model=24,
                encoder_layers=1,
                encoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_layers=1,
                decoder_attention_heads=2,
                decoder_ffn_dim=32,
                max_source_positions=WHISPER_POSITIONS,
                vocab_size=32,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=1,
                begin_suppress_tokens=None,
            )
        )
        self.head = CrossAttentionHead(dim=16, context_dim=24)

    def forward(self, pixel_values: torch.Tensor, input_features: torch.Tensor) -> torch.Tensor:
        image_tokens = self.image_encoder(pixel_values=pixel_values).last_hidden_state
        audio_tokens = self.audio_encoder(input_features=input_features).last_hidden_state
        return self.head(image_tokens, audio_tokens)


def clip_whisper_crossattn() -> nn.Module:
    torch.manual_seed(0)
    return ClipWhisperCrossAttn().eval()


# ----------------------------------------------------------------------------- 4. ResNet + GRU


class GruText(nn.Module):
    """Token embeddings through a GRU; the last layer's final hidden state."""

    def __init__(self, vocab: int = 32, dim: int = 16, hidden: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, hidden, num_layers=1, batch_first=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        _, last = self.rnn(self.tokens(input_ids))
        return last[-1]


class ResnetGruConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import ResNetConfig, ResNetModel

        self.image_encoder = ResNetModel(
            ResNetConfig(
                num_channels=3,
                embedding_size=8,
                hidden_sizes=[8, 16],
                depths=[1, 1],
                layer_type="basic",
                hidden_act="relu",
            )
        )
        self.text_encoder = GruText()
        self.head = ConcatHead([16, 16])

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        image = self.image_encoder(pixel_values=pixel_values).pooler_output.flatten(1)
        return self.head(image, self.text_encoder(input_ids))


def resnet_gru_concat() -> nn.Module:
    torch.manual_seed(0)
    return ResnetGruConcat().eval()


# ----------------------------------------------------------------------------- 5. EfficientNet + LSTM


class LstmAudio(nn.Module):
    """Log-mel frames [b, mels, frames] transposed to [b, frames, mels] through an LSTM."""

    def __init__(self, mels: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.rnn = nn.LSTM(mels, hidden, num_layers=1, batch_first=True)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        _, (last, _) = self.rnn(log_mel.transpose(1, 2))
        return last[-1]


class EfficientnetLstmGated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import EfficientNetConfig, EfficientNetModel

        # width 0.25: every stage has 8 channels, expansion 6 gives 48, top conv 320 (=
        # round_filters(1280)), which hidden_dim must equal. The second and third stages repeat
        # (a residual block with drop-connect after the first of each).
        self.image_encoder = EfficientNetModel(
            EfficientNetConfig(
                num_channels=3,
                image_size=32,
                width_coefficient=0.25,
                depth_coefficient=1.0,
                kernel_sizes=[3, 3, 5],
                in_channels=[32, 16, 24],
                out_channels=[16, 24, 40],
                strides=[1, 2, 2],
                num_block_repeats=[1, 2, 2],
                expand_ratios=[1, 6, 6],
                hidden_dim=320,
            )
        )
        self.audio_encoder = LstmAudio()
        self.head = GatedHead([320, 16])

    def forward(self, pixel_values: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
        image = self.image_encoder(pixel_values=pixel_values).pooler_output.flatten(1)
        return self.head(image, self.audio_encoder(log_mel))


def efficientnet_lstm_gated() -> nn.Module:
    torch.manual_seed(0)
    return EfficientnetLstmGated().eval()


# ----------------------------------------------------------------------------- 6. MobileNetV2 + ONet face


class ONetFace(nn.Module):
    """MTCNN's ONet at a quarter of its width (48x48 face crops), as facenet-pytorch writes it:
    channel-last flatten (``permute(0, 3, 2, 1).contiguous().view(n, -1)``) into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3)
        self.prelu1 = nn.PReLU(8)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(16, 16, kernel_size=3)
        self.prelu3 = nn.PReLU(16)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(16, 32, kernel_size=2)
        self.prelu4 = nn.PReLU(32)
        self.dense5 = nn.Linear(32 * 3 * 3, 32)
        self.prelu5 = nn.PReLU(32)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.prelu1(self.conv1(face)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        return self.prelu5(self.dense5(x.view(x.shape[0], -1)))


class BagText(nn.Module):
    """Embedding + mean over positions (no mask): a bag of words."""

    def __init__(self, vocab: int = 32, dim: int = 8) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(input_ids).mean(dim=1)


class MobilenetPermflattenConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import MobileNetV2Config, MobileNetV2Model

        # depth_multiplier 0.25 with min_depth 8: 8..80 channels; finegrained_output=False scales
        # the final 1x1 conv too (1280 -> 320).
        self.image_encoder = MobileNetV2Model(
            MobileNetV2Config(
                num_channels=3,
                image_size=32,
                depth_multiplier=0.25,
                min_depth=8,
                finegrained_output=False,
            )
        )
        self.face_encoder = ONetFace()
        self.text_encoder = BagText()
        self.head = ConcatHead([320, 32, 8])

    def forward(
        self, pixel_values: torch.Tensor, face: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        image = self.image_encoder(pixel_values=pixel_values).pooler_output
        return self.head(image, self.face_encoder(face), self.text_encoder(input_ids))


def mobilenet_permflatten_concat() -> nn.Module:
    torch.manual_seed(0)
    return MobilenetPermflattenConcat().eval()


# ----------------------------------------------------------------------------- 7. LeViT + text


class MaskedBagText(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(_masked_mean(self.tokens(input_ids), attention_mask))


class LevitTextConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import LevitConfig, LevitModel

        # 64x64 images, 16x16 patches (four stride-2 conv+hardswish): 4x4 tokens, subsampled
        # to 2x2 and 1x1 between the three stages (LevitConfig always builds two subsamples).
        self.image_encoder = LevitModel(
            LevitConfig(
                image_size=64,
                num_channels=3,
                patch_size=16,
                hidden_sizes=[16, 24, 32],
                num_attention_heads=[2, 3, 4],
                depths=[1, 1, 1],
                key_dim=[8, 8, 8],
                mlp_ratio=[2, 2, 2],
                attention_ratio=[2, 2, 2],
            )
        )
        self.text_encoder = MaskedBagText()
        self.head = ConcatHead([32, 16])

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image = self.image_encoder(pixel_values=pixel_values).pooler_output
        return self.head(image, self.text_encoder(input_ids, attention_mask))


def levit_text_concat() -> nn.Module:
    torch.manual_seed(0)
    return LevitTextConcat().eval()


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ZooEntry:
    factory: str
    inputs: dict[str, dict[str, Any]]
    axes: dict[str, dict[str, int]]
    branches: dict[str, list[str]]
    notes: str = ""


BATCH = {"min": 1, "opt": 1, "max": 4}
SEQ = {"min": 4, "opt": 8, "max": 16}
VOCAB = 32


def _ids(modality: str = "text") -> dict[str, Any]:
    return {"shape": ["batch", "seq"], "dtype": "int64", "modality": modality, "range": [0, VOCAB]}


def _mask() -> dict[str, Any]:
    return {"shape": ["batch", "seq"], "dtype": "int64", "modality": "text", "range": [1, 2]}


def _image(*shape: int | str) -> dict[str, Any]:
    return {"shape": ["batch", *shape], "dtype": "float32", "modality": "image"}


def _audio(*shape: int | str) -> dict[str, Any]:
    return {"shape": ["batch", *shape], "dtype": "float32", "modality": "audio"}


ZOO: dict[str, ZooEntry] = {
    "bert_vit_concat": ZooEntry(
        factory="tests.zoo:bert_vit_concat",
        inputs={
            "input_ids": _ids(),
            # [0, 2): segment ids 0 and 1 (type_vocab_size 2).
            "token_type_ids": {**_ids(), "range": [0, 2]},
            "attention_mask": _mask(),
            "pixel_values": _image(3, 16, 16),
        },
        axes={"batch": BATCH, "seq": SEQ},
        branches={"text": ["text_encoder"], "image": ["image_encoder"], "fusion": ["head"]},
        notes="BertModel (three int64 inputs, SDPA attention with a padding mask, tanh "
        "pooler) and ViTModel (patch Conv2d, CLS token and positions as bare Parameters, "
        "pooler); concat + MLP",
    ),
    "distilbert_wav2vec2_gated": ZooEntry(
        factory="tests.zoo:distilbert_wav2vec2_gated",
        inputs={
            "input_ids": _ids(),
            "attention_mask": _mask(),
            "waveform": _audio("samples"),
        },
        axes={"batch": BATCH, "seq": SEQ, "samples": {"min": 160, "opt": 320, "max": 640}},
        branches={"text": ["text_encoder"], "audio": ["audio_encoder"], "fusion": ["head"]},
        notes="DistilBertModel; Wav2Vec2Model on a raw waveform (strided Conv1d feature "
        "encoder with GroupNorm, weight-norm parametrized grouped positional conv, dynamic "
        "sample count); both branches end in token-level outputs (masked mean / mean pooling "
        "happens in the top-level forward); gated weighted sum (projections, softmax gates) "
        "of 16- and 24-wide branches",
    ),
    "clip_whisper_crossattn": ZooEntry(
        factory="tests.zoo:clip_whisper_crossattn",
        inputs={
            "pixel_values": _image(3, 16, 16),
            "input_features": _audio(WHISPER_MELS, 2 * WHISPER_POSITIONS),
        },
        axes={"batch": BATCH},
        branches={"image": ["image_encoder"], "audio": ["audio_encoder"], "fusion": ["head"]},
        notes="CLIPVisionModel (pre-LN, quick_gelu, class embedding as a bare Parameter); "
        "WhisperEncoder (Conv1d stem, fixed frame count, frozen sinusoidal positions); deep "
        "fusion: nn.MultiheadAttention with kdim/vdim != embed_dim (image tokens attend to "
        "audio tokens); only the batch axis is dynamic",
    ),
    "resnet_gru_concat": ZooEntry(
        factory="tests.zoo:resnet_gru_concat",
        inputs={"pixel_values": _image(3, 32, 32), "input_ids": _ids()},
        axes={"batch": BATCH, "seq": SEQ},
        branches={"image": ["image_encoder"], "text": ["text_encoder"], "fusion": ["head"]},
        notes="ResNetModel (basic blocks, BatchNorm, shortcut projection, max-pool stem, "
        "adaptive avg pool); Embedding + nn.GRU over a dynamic sequence; concat",
    ),
    "efficientnet_lstm_gated": ZooEntry(
        factory="tests.zoo:efficientnet_lstm_gated",
        inputs={"pixel_values": _image(3, 32, 32), "log_mel": _audio(8, "frames")},
        axes={"batch": BATCH, "frames": {"min": 8, "opt": 16, "max": 32}},
        branches={"image": ["image_encoder"], "audio": ["audio_encoder"], "fusion": ["head"]},
        notes="EfficientNetModel (depthwise convs, squeeze-excitation, swish, ZeroPad2d, "
        "ceil-mode AvgPool with a kernel larger than the map); nn.LSTM over transposed "
        "log-mel frames; gated weighted sum",
    ),
    "mobilenet_permflatten_concat": ZooEntry(
        factory="tests.zoo:mobilenet_permflatten_concat",
        inputs={
            "pixel_values": _image(3, 32, 32),
            "face": _image(3, 48, 48),
            "input_ids": _ids(),
        },
        axes={"batch": BATCH, "seq": SEQ},
        branches={
            "image": ["image_encoder"],
            "face": ["face_encoder"],
            "text": ["text_encoder"],
            "fusion": ["head"],
        },
        notes="MobileNetV2Model (inverted residuals, depthwise, ReLU6, TF 'same' padding); "
        "MTCNN ONet-style face branch (PReLU, ceil-mode MaxPool, channel-last "
        "permute+contiguous+view flatten into a Linear); Embedding + mean; concat",
    ),
    "levit_text_concat": ZooEntry(
        factory="tests.zoo:levit_text_concat",
        inputs={"pixel_values": _image(3, 64, 64), "input_ids": _ids(), "attention_mask": _mask()},
        axes={"batch": BATCH, "seq": SEQ},
        branches={"image": ["image_encoder"], "text": ["text_encoder"], "fusion": ["head"]},
        notes="LevitModel (hard-swish, Linear+BatchNorm1d pairs, attention biases gathered "
        "by a position-index buffer and cached per device in eval mode, subsample attention "
        "between 3 stages); Embedding + masked mean; concat",
    ),
}


# ----------------------------------------------------------------------------- realistic sizes


class BertBaseResnet18(nn.Module):
    """BERT-base width (768 wide, 12 heads, 3072 FFN; 4 of its 12 layers, to fit a 2-core
    machine's benchmark time) and ResNet-18 at 224x224, concatenated: what the pruning
    benchmark times (benchmarks/prune_real.py). Random weights: speed, not accuracy."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel, ResNetConfig, ResNetModel

        self.text_encoder = BertModel(
            BertConfig(num_hidden_layers=4, max_position_embeddings=128), add_pooling_layer=False
        )
        self.image_encoder = ResNetModel(
            ResNetConfig(
                embedding_size=64,
                hidden_sizes=[64, 128, 256, 512],
                depths=[2, 2, 2, 2],
                layer_type="basic",
                hidden_act="relu",
            )
        )
        self.head = ConcatHead([768, 512], hidden=256)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        text = _masked_mean(hidden.last_hidden_state, attention_mask)
        image = self.image_encoder(pixel_values=pixel_values).pooler_output.flatten(1)
        return self.head(text, image)


def bert_base_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return BertBaseResnet18().eval()


# Realistic sizes: not in the CI matrix (seconds per call, not milliseconds); the benchmarks
# run them (benchmarks/prune_real.py).
REALISTIC: dict[str, ZooEntry] = {
    "bert_base_resnet18": ZooEntry(
        factory="tests.zoo:bert_base_resnet18",
        inputs={
            "input_ids": {**_ids(), "range": [0, 30522]},
            "attention_mask": _mask(),
            "pixel_values": _image(3, 224, 224),
        },
        axes={"batch": {"min": 1, "opt": 1, "max": 8}, "seq": {"min": 16, "opt": 64, "max": 128}},
        branches={"text": ["text_encoder"], "image": ["image_encoder"], "fusion": ["head"]},
        notes="BertModel at BERT-base width (4 layers) and ResNet-18 at 224x224; concat",
    ),
}


# ----------------------------------------------------------------------------- recipes and data

_BASE: dict[str, Any] = {
    "outputs": ["logits"],
    "calibration": {"batch": 4},
    # eval.batch stays within the batch axis (max 4); label_key is the default, "label".
    "eval": {"batch": 4},
    # Random weights and labels: the gate checks numerics only (as the tiny recipe).
    "compare": {"min_cosine": 0.9, "max_accuracy_drop": None, "min_top1_agreement": None},
    "bench": {"warmup": 2, "iterations": 10, "threads": 1},
    # Tiny widths (8-64): channels kept in multiples of 2, not the default 8 that suits real
    # widths, or most layers would be too narrow to prune and the matrix would test little.
    "prune": {"round_to": 2},
}


def _sizes(raw: dict[str, Any], point: str) -> dict[str, int]:
    axes = raw["axes"]
    if point == "mid":
        return {n: (a["min"] + a["max"]) // 2 for n, a in axes.items()}
    return {n: a[point] for n, a in axes.items()}


def _feeds(raw: dict[str, Any], n: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """n samples with the recipe's dtypes and ranges; masks pad the end of some rows (never all
    of a row), and token ids under padding are 0."""
    rng = np.random.default_rng(seed)
    batch_axis = next(iter(raw["inputs"].values()))["shape"][0]
    feeds: dict[str, np.ndarray] = {}
    for name, spec in raw["inputs"].items():
        shape = tuple(
            n if dim == batch_axis else sizes[dim] if isinstance(dim, str) else dim
            for dim in spec["shape"]
        )
        dtype = np.dtype(spec.get("dtype", "float32"))
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in name:
            lengths = rng.integers(max(1, shape[1] // 2), shape[1] + 1, size=n)
            feeds[name] = (np.arange(shape[1])[None, :] < lengths[:, None]).astype(dtype)
        else:
            low, high = spec.get("range") or (0, 2)
            feeds[name] = rng.integers(int(low), int(high), size=shape).astype(dtype)
    masks = [v for k, v in feeds.items() if "mask" in k]
    if masks:
        for name in raw["inputs"]:
            if name.endswith("input_ids") and feeds[name].shape == masks[0].shape:
                feeds[name] = feeds[name] * masks[0]
    return feeds


def _write_shards(
    raw: dict[str, Any], directory: Path, points: list[str], samples: int, labels: bool, seed: int
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("shard-*.npz"):
        old.unlink()
    for k, point in enumerate(points):
        arrays = _feeds(raw, samples, _sizes(raw, point), seed + k)
        if labels:
            arrays["label"] = np.random.default_rng(seed + k).integers(0, CLASSES, size=samples)
        np.savez(directory / f"shard-{k:03d}.npz", **arrays)  # type: ignore[arg-type]


def zoo_raw(name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The entry's recipe as a mapping; ``extra`` maps dotted keys to values (None deletes)."""
    entry = {**ZOO, **REALISTIC}[name]
    raw: dict[str, Any] = {
        "name": name,
        "description": entry.notes,
        "model": {"factory": entry.factory},
        "inputs": copy.deepcopy(entry.inputs),
        "axes": copy.deepcopy(entry.axes),
        **copy.deepcopy(_BASE),
        "branches": copy.deepcopy(entry.branches),
    }
    return _apply(raw, extra or {})


def _apply(raw: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return raw


def zoo_recipe(name: str, directory: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``NAME.yaml`` and its data (``NAME-calib``: 16 samples in 2 shards at the opt and
    max sizes of every axis; ``NAME-eval``: 16 labelled samples at the min and middle sizes)
    into ``directory``; return the recipe's path. Several entries can share a directory."""
    raw = zoo_raw(name, {"calibration.path": f"{name}-calib", "eval.path": f"{name}-eval"})
    if extra:  # the caller's changes last: they may point elsewhere, go synthetic or drop eval
        raw = _apply(raw, extra)
    directory.mkdir(parents=True, exist_ok=True)
    calib = raw.get("calibration") or {}
    if calib.get("synthetic") is not None and "calibration.path" not in (extra or {}):
        calib.pop("path", None)  # synthetic replaces the shards
    if calib.get("path") is not None and calib.get("synthetic") is None:
        _write_shards(raw, directory / calib["path"], ["opt", "max"], 8, labels=False, seed=0)
    evaluation = raw.get("eval") or {}
    if evaluation.get("path") is not None:
        _write_shards(raw, directory / evaluation["path"], ["min", "mid"], 8, True, seed=100)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
