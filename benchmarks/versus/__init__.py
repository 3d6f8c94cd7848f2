"""Side-by-side comparisons with the tools a team would use instead (`benchmarks/peers.py`)."""
