"""The gateway: what the app adds in front of Ray Serve LLM and vLLM (auth, limits, errors)."""
