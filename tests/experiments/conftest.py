"""Puts experiments/ on sys.path, as `python experiments/task_conflict.py` does, so that the
tests import the experiment's modules (task_conflict, arms, summary) by name."""

import sys
from pathlib import Path

EXPERIMENTS = str(Path(__file__).resolve().parents[2] / "experiments")
if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)
