"""Ollama model-name rules (types/model/name.go), as push, the stand-in server and the CLI use them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_forge import ollama_names as N
from ollama_forge.errors import ForgeError


@pytest.mark.parametrize("name,parts", [
    ("mymodel", ("registry.ollama.ai", "library", "mymodel", "latest")),
    ("mymodel:v1", ("registry.ollama.ai", "library", "mymodel", "v1")),
    ("me/my.model:q4_K_M", ("registry.ollama.ai", "me", "my.model", "q4_K_M")),
    ("example.com/me/m:t", ("example.com", "me", "m", "t")),
    ("localhost:5000/me/m", ("localhost:5000", "me", "m", "latest")),  # the last ':' is before the last '/'
    ("https://example.com:8080/ns/m:1.0", ("example.com:8080", "ns", "m", "1.0")),
    ("_private/x_y-z:T_1", ("registry.ollama.ai", "_private", "x_y-z", "T_1")),
    ("Qwen2.5-0.5B:Latest", ("registry.ollama.ai", "library", "Qwen2.5-0.5B", "Latest")),
])
def test_valid_names_and_their_defaults(name, parts):
    n = N.parse(name)
    assert (n.host, n.namespace, n.model, n.tag) == parts
    assert N.is_valid(name)


@pytest.mark.parametrize("name,why", [
    ("", "empty"),
    ("a/", "model is empty"),
    (":x", "model is empty"),
    ("m:", "tag is empty"),
    ("/m", "namespace is empty"),
    ("-m", "must start with"),
    ("m:-t", "must start with"),
    ("my.ns/m", "namespace 'my.ns' has '.'"),
    ("m/o:d:e", "has ':'"),
    ("my model", "has ' '"),
    ("a/b/c/d", "host 'a/b' has '/'"),
    ("m" * 81, "at most 80"),
    ("m:" + "t" * 81, "at most 80"),
    ("h" * 351 + "/n/m", "at most 350"),
    ("m@sha256:abc", "has '@'"),
])
def test_invalid_names_say_why(name, why):
    assert why in N.problem(name)
    with pytest.raises(ForgeError) as e:
        N.parse(name)
    assert "invalid Ollama model name" in e.value.one_line()


def test_shortest_form_and_case_insensitive_identity():
    assert N.shortest("mymodel") == "mymodel:latest"
    assert N.shortest("registry.ollama.ai/library/m:t") == "m:t"
    assert N.shortest("me/m") == "me/m:latest"
    assert N.shortest("example.com/library/m:t") == "example.com/library/m:t"
    assert N.parse("MyModel:Latest").same_as("mymodel")
    assert not N.parse("mymodel:v1").same_as("mymodel")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.none() | st.text(max_size=20))
def test_suggest_always_gives_a_valid_name(text, tag):
    assert N.is_valid(N.suggest(text, tag))


def test_suggest_keeps_a_readable_name():
    assert N.suggest("My Run #2") == "my-run-2"
    assert N.suggest("qwen2.5 tuned", "q4_K_M") == "qwen2.5-tuned:q4_K_M"
