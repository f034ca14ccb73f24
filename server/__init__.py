"""The OpenAI-compatible HTTP server: `create_app(engine, model)` and `ferrumc serve`."""
