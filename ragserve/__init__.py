"""ragserve: retrieval-augmented generation behind an OpenAI-compatible API."""

__version__ = "0.1.0"
