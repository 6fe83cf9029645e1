"""`python -m mmedge`: what the fleet's device agent runs (a venv's scripts may not be on PATH)."""

from mmedge.cli import main

main()
