"""Evaluation and benchmark scripts for demix (``python -m eval.<name>``)."""
