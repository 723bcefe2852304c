"""fedge benchmarks: each measures its own baseline in the same run and writes a ratio."""
