"""label-with-confidence: a Label Studio ML backend with a cost-aware cascade of calibrated LLMs."""

__version__ = "0.1.0"
