"""scaled-ql."""
