"""fedsim: a Ray-based simulation platform for federated multi-modal clustering."""

__version__ = "0.1.0"
