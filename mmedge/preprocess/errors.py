"""One sample's field could not be read or processed: collected per file, never fatal alone."""

from __future__ import annotations


class SampleError(Exception):
    """A bad file or value; the builder collects these and summarizes them (exit code 4)."""
