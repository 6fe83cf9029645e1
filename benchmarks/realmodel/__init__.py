"""A real pretrained tri-modal fusion model and its data, for INT8 benchmarks (see README.md)."""
