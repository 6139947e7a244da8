"""Model names for the stand-in: parsing and validity come from ``ollama_forge.ollama_names`` (one copy of Ollama's
rules in the project); this module only adapts them to the store's (host, namespace, model, tag) parts."""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


class Name(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str

    def shortest(self) -> str:
        """Ollama's DisplayShortest: ``m:tag``, ``ns/m:tag`` or ``host/ns/m:tag``."""
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse(text: str) -> Name | None:
    """The name's four parts with Ollama's defaults filled in, or None when Ollama would call it invalid."""
    from ollama_forge import ollama_names

    if ollama_names.problem(text) is not None:
        return None
    n = ollama_names.parse(text)
    return Name(n.host, n.namespace, n.model, n.tag)
