"""kiln: train, export, verify, benchmark and serve text classifiers."""

__version__ = "0.1.0"
