"""A faithful Ollama stand-in for tests (no real Ollama can be installed on CI machines).

``serve(store_dir, port=0)`` starts it in a thread; ``python -m tests.ollama_standin --port N --store DIR`` runs it
alone. Behaviour follows shared/reference/ollama.md; see server.py for the routes and the test-only fault hooks.
"""

from .server import StandinServer, serve

__all__ = ["StandinServer", "serve"]
