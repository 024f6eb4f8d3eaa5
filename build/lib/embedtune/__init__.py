"""embedtune: turn a raw domain corpus into a domain-specific text embedding model."""

__version__ = "0.1.0"
