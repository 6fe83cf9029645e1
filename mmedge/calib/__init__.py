"""``mmedge calib``: build calibration sets from raw multimodal files, and inspect any set."""
