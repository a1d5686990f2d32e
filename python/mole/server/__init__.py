"""`mole serve`: an OpenAI-compatible HTTP server with continuous batching (the `server` extra: Starlette and
uvicorn). protocol.py: OpenAI's request and response shapes; engine.py: the decode loop over mole.batch;
metrics.py: /metrics; app.py: the routes and the command; process.py: a server as a child process and raw HTTP
requests to it (the tests' and benchmarks')."""
