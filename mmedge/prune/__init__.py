"""Pruning: structured per branch (``structured``), recovery by distillation (``recover``), the
`mmedge prune` command's artifact (``artifact``), and the shapes file a pruned model is rebuilt
from (``shapes``). Kept import-free: loading a pruned model needs only ``shapes``."""
