"""ollama-forge tests (a package so tests and bench scripts can import tests.fixtures)."""
