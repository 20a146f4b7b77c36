"""tissueseg: H&E tissue segmentation from cheap labels."""

__version__ = "0.1.0"
