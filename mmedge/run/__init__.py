"""`mmedge run`: one recipe through every target to one report (see engine.py, steps.py)."""
