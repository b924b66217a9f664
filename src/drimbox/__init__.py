"""drimbox: the DRIM-M imaging sharing network in Python."""

__version__ = "0.1.0"
