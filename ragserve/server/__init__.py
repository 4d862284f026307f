"""HTTP layer: an OpenAI-compatible API over the engine. Thin: parse, call the engine, format."""
