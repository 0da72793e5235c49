"""`llmrun serve`: an OpenAI-compatible HTTP API over the engine. Import ``server.app`` for
``create_app``; this package itself imports nothing heavy."""
