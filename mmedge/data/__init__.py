"""The data layer: sharded datasets read by calibration, eval, compare and recovery
(``datasets``), and the `mmedge calib` command that builds and inspects them from raw files
(``build``, ``inspect``, ``sources``, ``sampling``, ``checks``, ``stats``)."""
