"""Answer metrics: exact / contains / ROUGE-L against references, and bootstrap confidence intervals.

Pure Python (no numpy): eval sets are tens to hundreds of prompts, and these run in microseconds.
"""

from __future__ import annotations

import random
import re
import statistics
import unicodedata
from typing import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Lower-case, NFKC, collapse whitespace, strip surrounding punctuation: what 'the same answer' means."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(text.split()).strip(" .,!?;:\"'")


def exact(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def contains(answer: str, reference: str) -> float:
    ref = normalize(reference)
    return float(bool(ref) and ref in normalize(answer))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens."""
    a, r = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
    lcs = _lcs(a, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(a), lcs / len(r)
    return 2 * p * rec / (p + rec)


def mean_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
            ) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap, seeded so reports are reproducible."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    m = statistics.fmean(values)
    if len(values) == 1:
        return m, m, m
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * n_boot)]
    hi = means[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return m, lo, hi


def paired_diff_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """Mean of a - b over the same prompts with a paired bootstrap interval: 'is B better than A on these prompts'."""
    if len(a) != len(b):
        raise ValueError("paired metrics need the same prompts")
    return mean_ci([x - y for x, y in zip(a, b)], level, n_boot, seed)
