"""ferrumc: an ahead-of-time compiler and OpenAI-compatible server for LLMs."""

__version__ = "0.1.0"
