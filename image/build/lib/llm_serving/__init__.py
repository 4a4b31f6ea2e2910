"""llm-serving: an OpenAI-compatible gateway for many models on Ray Serve LLM and vLLM."""

__version__ = "0.1.0"
