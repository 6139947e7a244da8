"""Ollama model-name rules (types/model/name.go), shared by push, the stand-in server and the CLI.

A name is ``[scheme://][host/][namespace/]model[:tag]``. Missing parts take the defaults ``registry.ollama.ai``,
``library`` and ``latest``. The tag is split off only when the last ``:`` comes after the last ``/`` (so
``localhost:5000/m`` has no tag). A separator with nothing on one side (``a/``, ``:x``, ``m:``) makes the name
invalid. Every part starts with a letter, digit or ``_``; after that the host may also use ``- _ . :``, the
namespace ``- _``, the model and the tag ``- _ .``. Lengths: host 1..350, the others 1..80. Ollama compares names
case-insensitively (an existing name keeps its first spelling).
"""

from __future__ import annotations

import dataclasses
import re

from .errors import ForgeError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_MISSING = "\x00missing"  # a separator with an empty side: never valid

_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_EXTRA_CHARS = {"host": "-_.:", "namespace": "-_", "model": "-_.", "tag": "-_."}


@dataclasses.dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def shortest(self) -> str:
        """The form ``ollama list`` shows: defaults dropped from the left (``mymodel:latest``, ``ns/m:tag``)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def key(self) -> tuple[str, str, str, str]:
        """Case-insensitive identity (Ollama matches names ignoring ASCII case)."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def same_as(self, other: "OllamaName | str") -> bool:
        other = parse(other) if isinstance(other, str) else other
        return self.key() == other.key()


def _cut_last(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    before, after = s[:i], s[i + len(sep):]
    return before or _MISSING, after or _MISSING, True


def split(name: str) -> dict[str, str]:
    """The raw parts of ``name`` (missing ones are ""); no defaults, no validation."""
    parts = {"host": "", "namespace": "", "model": "", "tag": ""}
    s = name
    if s.rfind(":") > s.rfind("/"):
        s, parts["tag"], _ = _cut_last(s, ":")
    s, model, cut = _cut_last(s, "/")
    if not cut:
        parts["model"] = s
        return parts
    parts["model"] = model
    s, namespace, cut = _cut_last(s, "/")
    if not cut:
        parts["namespace"] = s
        return parts
    parts["namespace"] = namespace
    scheme, sep, host = s.partition("://")
    parts["host"] = host if sep else scheme
    return parts


def part_problem(kind: str, value: str) -> str | None:
    """Why ``value`` is not a valid ``kind`` part ("host", "namespace", "model", "tag"), or None."""
    if value == _MISSING or value == "":
        return f"{kind} is empty"
    if len(value) > _MAX_LEN[kind]:
        return f"{kind} is {len(value)} characters long (at most {_MAX_LEN[kind]})"
    if not _is_alnum_underscore(value[0]):
        return f"{kind} {value!r} must start with a letter, a digit or '_'"
    allowed = _EXTRA_CHARS[kind]
    for c in value[1:]:
        if not (_is_alnum_underscore(c) or c in allowed):
            return f"{kind} {value!r} has {c!r} (allowed: letters, digits, {' '.join(allowed)})"
    return None


def _is_alnum_underscore(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def problem(name: str) -> str | None:
    """Why Ollama would reject ``name`` (``invalid model name``), or None when it is valid."""
    if not isinstance(name, str) or not name:
        return "the name is empty"
    raw = split(name)
    filled = {k: raw[k] or default for k, default in
              (("host", DEFAULT_HOST), ("namespace", DEFAULT_NAMESPACE), ("model", ""), ("tag", DEFAULT_TAG))}
    for kind in ("host", "namespace", "model", "tag"):
        why = part_problem(kind, filled[kind])
        if why:
            return why
    return None


def is_valid(name: str) -> bool:
    return problem(name) is None


def parse(name: str) -> OllamaName:
    """Parse and fill defaults; raises ForgeError (what is wrong, how to fix) for a name Ollama would reject."""
    why = problem(name)
    if why:
        raise ForgeError(f"invalid Ollama model name {name!r}: {why}",
                         "use [namespace/]model[:tag] with letters, digits, '-', '_' and '.' (e.g. my-model:v1)")
    raw = split(name)
    return OllamaName(host=raw["host"] or DEFAULT_HOST, namespace=raw["namespace"] or DEFAULT_NAMESPACE,
                      model=raw["model"], tag=raw["tag"] or DEFAULT_TAG)


def shortest(name: str) -> str:
    return parse(name).shortest


_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def suggest(text: str, tag: str | None = None) -> str:
    """A valid model name made from arbitrary text (a run or directory name): ``My Run #2`` -> ``my-run-2``."""
    model = _BAD.sub("-", text.strip().lower()).strip("-.")
    model = re.sub(r"\.{2,}", ".", model)
    if not model or not _is_alnum_underscore(model[0]):
        model = "m-" + model if model else "model"
    model = model[:80].rstrip("-.") or "model"
    if tag is None:
        return model
    t = _BAD.sub("-", tag.strip()).strip("-.") or DEFAULT_TAG
    if not _is_alnum_underscore(t[0]):
        t = "v" + t
    return f"{model}:{t[:80]}"
