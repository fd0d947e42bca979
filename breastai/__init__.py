"""breastai: breast imaging exams in, explained and calibrated malignancy scores out."""

__version__ = "0.1.0"

__all__ = ["__version__"]
