"""itstudy: do models really learn to follow instructions? Experiments at cluster scale."""

__version__ = "0.1.0"
