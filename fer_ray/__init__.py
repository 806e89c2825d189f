"""fer-ray: facial-expression recognition trained, tuned, ensembled, served and bulk-scored on Ray."""

__version__ = "0.1.0"
