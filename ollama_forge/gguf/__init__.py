"""HF model directory -> GGUF, written by us on the ``gguf`` package (llama.cpp's conventions).

``archs`` is the table (one row per supported architecture: GGUF arch, hyper-parameter keys, tensor transforms),
``vocab`` reads the tokenizer files into what llama.cpp expects, ``convert`` streams the tensors into the file
(``from ollama_forge.gguf.convert import convert_hf_to_gguf``).

This package is named like the PyPI ``gguf`` package it builds on. Every module here starts with
``from __future__ import annotations`` and uses absolute imports only, so ``import gguf`` inside a function always
gets the PyPI package, never this one (tests/test_convert.py checks it). Nothing is imported here: importing
``ollama_forge.gguf`` stays free of numpy and gguf.
"""

from __future__ import annotations
