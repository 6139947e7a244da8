"""Teacher-forced next-token scores: HF models through transformers, GGUF files through llama.cpp (logits_all).

Both give a (positions, vocab) float32 array for a token-id sequence, so perplexity of reference answers and the
fidelity gate's hop-by-hop comparisons run on the same ids for every model. A prompt and its completion are
tokenized together (as training tokenized them) and split where the prompt's own tokens end; when joint
tokenization does not start with the prompt's tokens, the completion is tokenized on its own and appended.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclasses.dataclass
class TokenSeq:
    ids: list[int]
    n_prompt: int  # ids[:n_prompt] is the prompt; the logits at n_prompt-1 .. len-2 predict the completion

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.n_prompt


def join(encode_prompt: Callable[[str], list[int]], encode_full: Callable[[str], list[int]],
         encode_text: Callable[[str], list[int]], prompt: str, completion: str) -> TokenSeq:
    p = encode_prompt(prompt)
    full = encode_full(prompt + completion)
    if full[:len(p)] == p and len(full) > len(p):
        return TokenSeq(full, len(p))
    return TokenSeq(p + encode_text(completion), len(p))


def log_softmax(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def completion_nll(logits, seq: TokenSeq) -> list[float]:
    """Negative log-likelihood of each completion token under ``logits`` (rows aligned with ``seq.ids``)."""
    lp = log_softmax(logits[seq.n_prompt - 1:len(seq.ids) - 1])
    return [-float(lp[i, t]) for i, t in enumerate(seq.ids[seq.n_prompt:])]


def perplexity(nlls: Sequence[Sequence[float]]) -> float | None:
    """exp(mean NLL per token) over every completion token of every prompt (None without tokens)."""
    total = sum(len(x) for x in nlls)
    if not total:
        return None
    return math.exp(sum(sum(x) for x in nlls) / total)


def llama_threads() -> int:
    """Threads for llama.cpp, prompt batches included (llama-cpp-python's own default for batches is every CPU):
    see ``backends.transformers.busy_aware_threads``."""
    from ..backends.transformers import busy_aware_threads

    return busy_aware_threads()


def tune_threads(llm: Any, n: int | None = None) -> None:
    """Set generation and batch threads of a loaded ``llama_cpp.Llama`` (a backend's, too) to ``n``."""
    import llama_cpp

    n = n or llama_threads()
    llama_cpp.llama_set_n_threads(llm.ctx, n, n)


def load_llama(path: str | os.PathLike, *, n_ctx: int, logits_all: bool = False, n_threads: int | None = None):
    """llama_cpp.Llama for ``path``: weight repacking as the in-process backend decides it (off where AMX is
    advertised; see ``backends.llamacpp.choose_repack``), threads from :func:`llama_threads`."""
    from ..backends.llamacpp import choose_repack
    from ..backends.llamacpp import load_llama as load

    n = n_threads or llama_threads()
    return load(str(path), repack=choose_repack(None), n_ctx=n_ctx, logits_all=logits_all, n_threads=n,
                n_threads_batch=n, verbose=False)


class GGUFScorer:
    """Teacher-forced logits from a GGUF (llama.cpp with logits for every position)."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512):
        # llama-cpp-python keeps an (n_ctx, vocabulary) float32 array of scores with logits_all (0.5 GB at 1,024 x
        # 128k): start small and reload with a larger context only when a sequence needs it.
        self.path = Path(path)
        self.llm = load_llama(self.path, n_ctx=n_ctx, logits_all=True)
        self.n_ctx = n_ctx
        from ..backends.llamacpp import _metadata

        meta = _metadata(self.path)
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))

    @property
    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    def encode_prompt(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=True))

    def encode_text(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def logits(self, ids: list[int]):
        import numpy as np

        if len(ids) > self.n_ctx:
            trained = int(self.llm._model.n_ctx_train())  # noqa: SLF001 - no public accessor
            if len(ids) > trained:
                raise ValueError(f"{len(ids)} tokens exceed the model's context {trained}")
            self.close()
            self.n_ctx = min(trained, 1 << (len(ids) - 1).bit_length())
            self.llm = load_llama(self.path, n_ctx=self.n_ctx, logits_all=True)
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()


class HFScorer:
    """Teacher-forced logits from a TransformersBackend's model."""

    def __init__(self, backend: Any):
        self.backend = backend

    def encode_prompt(self, text: str) -> list[int]:
        return self.backend.encode_prompt(text)

    def encode_text(self, text: str) -> list[int]:
        return self.backend.encode_text(text)

    def logits(self, ids: list[int]):
        return self.backend.logits(ids).numpy()

    def close(self) -> None:
        pass


def compare(p_logits, q_logits, tie: float = 1e-3) -> tuple[int, int, list[float]]:
    """(positions where top-1 agrees, positions, KL(P||Q) per position) over the vocabulary both have.

    Top-1 "agrees" also when Q's pick is within ``tie`` logits of P's best in P itself: two tokens P scores equal to
    float precision are a tie, not a disagreement (1e-3 is far above fp32 rounding of these sums, far below any
    difference a real change makes).
    """
    import numpy as np

    v = min(p_logits.shape[-1], q_logits.shape[-1])
    p = np.asarray(p_logits[:, :v], dtype=np.float64)
    q = np.asarray(q_logits[:, :v], dtype=np.float64)
    pa, qa = p.argmax(-1), q.argmax(-1)
    rows = np.arange(len(p))
    agree = (pa == qa) | (p[rows, pa] - p[rows, qa] <= tie)
    lp, lq = log_softmax(p), log_softmax(q)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return int(agree.sum()), len(p), [max(0.0, float(k)) for k in kl]
