"""Load tests and benchmarks of flowagg."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: flowagg/, wsgi.py, loadtest/
