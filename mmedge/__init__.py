"""mmedge: make trained multimodal fusion models run on edge devices."""

from __future__ import annotations

__version__ = "0.1.0"
# The artifact directory format: a device's mmedge must read the same one (mmedge.fleet).
ARTIFACT_FORMAT = "mmedge-artifact/1"
