"""A model kept loaded: the request protocol, the operations (service), generations stepped together
(engine), a model's worker thread, the HTTP app and server (Starlette, uvicorn: optional) and the
OpenAI-compatible routes."""
