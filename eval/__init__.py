"""Scoring and comparing runs: offline `evaluate` metric modules, comparison tables and plots.

Submodules are imported on demand (``eval.metrics`` pulls in `evaluate` and `datasets`, which take seconds to
import; ``tuneforge compare`` does not need them).
"""
