"""Tokenizer files -> what llama.cpp reads: token list, types, scores or merges, pre-tokenizer, special ids, flags.

Two kinds are representable (../shared/reference/gguf-conversion.md §6):
- SentencePiece (``tokenizer.model``): ``llama`` model, pieces with scores and types (byte pieces ``<0xNN>``).
- Byte-level BPE (``tokenizer.json``): ``gpt2`` model, tokens + merges, and a pre-tokenizer name llama.cpp knows,
  derived from the tokenizer's own pre-tokenizer definition (its Split regex), not from a hash of encodings.
Anything else is a ForgeError before any output exists. Special-ness comes from tokenizer.json's ``added_tokens``
(transformers 5 no longer writes ``added_tokens_decoder`` to tokenizer_config.json).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ollama_forge.errors import ForgeError

# llama.cpp token types (gguf.TokenType): written as int32.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# ---------------------------------------------------------------------------------------------------------------
# pre-tokenizers llama.cpp knows, by the definition in tokenizer.json (llama-vocab.cpp regex sets)

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

Step = tuple  # ("Split", regex, behavior, invert) | ("ByteLevel", use_regex, add_prefix_space) | ("Digits", individual)

PRE_TOKENIZERS: dict[str, tuple[tuple[Step, ...], str]] = {
    # name llama.cpp knows -> (pre-tokenizer steps in tokenizer.json, who uses it)
    "llama-bpe": ((("Split", LLAMA3_REGEX, "Isolated", False), ("ByteLevel", False, False)), "Llama 3"),
    "qwen2": ((("Split", QWEN2_REGEX, "Isolated", False), ("ByteLevel", False, False)), "Qwen2/2.5/3"),
    "gpt-2": ((("ByteLevel", True, False),), "GPT-2 style byte-level BPE"),
    "smollm": ((("Digits", True), ("ByteLevel", True, False)), "SmolLM"),
}


def _steps(pre: Any) -> list[Step]:
    if not pre:
        return []
    t = pre.get("type")
    if t == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    if t == "Split":
        pat = pre.get("pattern", {})
        regex = pat.get("Regex") if "Regex" in pat else ("string:" + str(pat.get("String")))
        return [("Split", regex, pre.get("behavior"), bool(pre.get("invert")))]
    if t == "ByteLevel":
        return [("ByteLevel", bool(pre.get("use_regex", True)), bool(pre.get("add_prefix_space")))]
    if t == "Digits":
        return [("Digits", bool(pre.get("individual_digits")))]
    return [(t or "?",)]


def describe_steps(steps: list[Step]) -> str:
    parts = []
    for s in steps:
        if s[0] == "Split":
            parts.append(f"Split({s[1]!r})")
        elif s[0] == "ByteLevel":
            parts.append(f"ByteLevel(use_regex={s[1]}, add_prefix_space={s[2]})")
        elif s[0] == "Digits":
            parts.append(f"Digits(individual={s[1]})")
        else:
            parts.append(s[0])
    return " + ".join(parts) or "none"


def detect_pre_tokenizer(pre_tokenizer: Any, where: str = "tokenizer.json") -> str:
    """The llama.cpp pre-tokenizer name for this tokenizer.json ``pre_tokenizer``, or a ForgeError naming it."""
    steps = tuple(_steps(pre_tokenizer))
    for name, (known, _who) in PRE_TOKENIZERS.items():
        if steps == known:
            return name
    known_list = ", ".join(f"{n} ({who})" for n, (_s, who) in PRE_TOKENIZERS.items())
    raise ForgeError(f"{where}: pre_tokenizer {describe_steps(list(steps))} is not one llama.cpp knows",
                     f"known: {known_list}")


def looks_special(text: str) -> bool:
    """Added tokens some models forget to mark special (llama.cpp's converter treats them as CONTROL)."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Vocab:
    """Everything the GGUF tokenizer keys need."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) | "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None  # SentencePiece only
    merges: list[str] | None  # BPE only
    special_ids: dict[str, int]  # bos, eos always; unk, pad, sep, mask when the tokenizer has them
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None  # SentencePiece only
    chat_template: str | None
    named_templates: dict[str, str]
    source: str  # "tokenizer.model (SentencePiece)" | "tokenizer.json (byte-level BPE)"
    rstrip_specials: bool  # the special added tokens strip whitespace after them (Phi-3)
    spm_unk: int | None = None  # SentencePiece's own <unk> piece
    bos_is_eos_stand_in: bool = False  # the tokenizer has no BOS; bos_token_id repeats the EOS id
    choices: list[tuple[str, Any, str]] = dataclasses.field(default_factory=list)  # (what, value, reason)


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ForgeError(f"{path}:{e.lineno}: not valid JSON: {e.msg}",
                         "re-download or re-save the tokenizer") from None


def _token_content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def read_vocab(model_dir: Path, config: dict[str, Any], n_vocab: int) -> Vocab:
    """Read the tokenizer of ``model_dir`` for an embedding of ``n_vocab`` rows."""
    model_dir = Path(model_dir)
    tj_path, tc_path, spm_path = (model_dir / "tokenizer.json", model_dir / "tokenizer_config.json",
                                  model_dir / "tokenizer.model")
    tj = _load_json(tj_path) if tj_path.is_file() else None
    tc = _load_json(tc_path) if tc_path.is_file() else {}
    if spm_path.is_file():
        vocab = _read_spm(spm_path, tj, model_dir, n_vocab)
    elif tj is not None:
        vocab = _read_bpe(tj_path, tj, n_vocab)
    else:
        raise ForgeError(f"{model_dir}: no tokenizer.json or tokenizer.model",
                         "copy the tokenizer files of the base model into this directory")
    _special_ids(vocab, tj, tc, config, model_dir)
    _add_flags(vocab, tj, tc)
    _chat_template(vocab, tc, model_dir)
    return vocab


def _added_tokens(tj: Any) -> list[dict[str, Any]]:
    return [t for t in (tj or {}).get("added_tokens", []) if isinstance(t, dict) and "id" in t and "content" in t]


def _read_bpe(path: Path, tj: dict[str, Any], n_vocab: int) -> Vocab:
    model = tj.get("model") or {}
    if model.get("type") not in ("BPE", None) or not isinstance(model.get("vocab"), dict):
        raise ForgeError(f"{path}: tokenizer model {model.get('type')!r} without tokenizer.model cannot be written "
                         "to GGUF", "supported: byte-level BPE (tokenizer.json) or SentencePiece (tokenizer.model)")
    steps = _steps(tj.get("pre_tokenizer"))
    if not any(s[0] == "ByteLevel" for s in steps):
        raise ForgeError(f"{path}: BPE without a ByteLevel pre-tokenizer ({describe_steps(steps)}) is not supported",
                         "supported: byte-level BPE (tokenizer.json) or SentencePiece (tokenizer.model)")
    pre = detect_pre_tokenizer(tj.get("pre_tokenizer"), str(path))
    tokens: list[str | None] = [None] * n_vocab
    types = [UNUSED] * n_vocab
    for text, i in model["vocab"].items():
        if not 0 <= i < n_vocab:
            raise ForgeError(f"{path}: token {text!r} has id {i}, but the embedding has {n_vocab} rows",
                             "the tokenizer does not belong to these weights")
        tokens[i], types[i] = text, NORMAL
    rstrip = False
    for t in _added_tokens(tj):
        i, text = int(t["id"]), t["content"]
        if not 0 <= i < n_vocab:
            raise ForgeError(f"{path}: added token {text!r} has id {i}, but the embedding has {n_vocab} rows",
                             "the tokenizer does not belong to these weights")
        if t.get("special") or looks_special(text):
            tokens[i], types[i] = text, CONTROL
            rstrip = rstrip or bool(t.get("rstrip"))
        else:
            tokens[i], types[i] = text.replace("\u2581", " "), USER_DEFINED
    out_tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, list) and len(m) == 2:
            # transformers >= 4.45 writes pairs (parts may hold spaces); llama.cpp splits on the first space,
            # so a space inside a part is written as U+0120, its byte-level form.
            merges.append(" ".join(p.replace(" ", "\u0120") for p in m))
        else:
            raise ForgeError(f"{path}: merges entry {m!r} is neither 'a b' nor ['a', 'b']", "re-save the tokenizer")
    if not merges:
        raise ForgeError(f"{path}: BPE tokenizer has no merges", "llama.cpp needs the merges of a BPE vocabulary")
    return Vocab(model="gpt2", pre=pre, tokens=out_tokens, token_types=types, scores=None, merges=merges,
                 special_ids={}, add_bos=False, add_eos=False, add_space_prefix=None, chat_template=None,
                 named_templates={}, source="tokenizer.json (byte-level BPE)", rstrip_specials=rstrip)


def _read_spm(path: Path, tj: Any, model_dir: Path, n_vocab: int) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise ForgeError(f"{path}: not a SentencePiece model ({' '.join(str(e).split())[:120]})",
                         "re-download the tokenizer") from None
    n_sp = sp.vocab_size()
    if n_sp > n_vocab:
        raise ForgeError(f"{path}: {n_sp} pieces, but the embedding has {n_vocab} rows",
                         "the tokenizer does not belong to these weights")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [UNUSED] * n_vocab
    for i in range(n_sp):
        tokens[i], scores[i] = sp.IdToPiece(i), float(sp.GetScore(i))
        types[i] = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                    else BYTE if sp.IsByte(i) else NORMAL)
    added = list(_added_tokens(tj))
    legacy = model_dir / "added_tokens.json"
    if legacy.is_file():
        added += [{"id": i, "content": c, "special": False} for c, i in _load_json(legacy).items()]
    rstrip = False
    for t in added:
        i, text = int(t["id"]), t["content"]
        if not 0 <= i < n_vocab:
            raise ForgeError(f"{path.parent / 'tokenizer.json'}: added token {text!r} has id {i}, but the embedding "
                             f"has {n_vocab} rows", "the tokenizer does not belong to these weights")
        if i < n_sp and types[i] in (UNKNOWN, BYTE) and tokens[i] == text:
            continue  # keep <unk> UNKNOWN and <0xNN> BYTE: llama.cpp's SPM needs them typed so
        if t.get("special") or looks_special(text):
            tokens[i], types[i] = text, CONTROL
            rstrip = rstrip or bool(t.get("rstrip"))
        else:
            tokens[i], types[i] = text.replace("\u2581", " "), USER_DEFINED
        scores[i] = -1000.0
    add_space_prefix, how = _spm_prefix(tj, sp)
    v = Vocab(model="llama", pre="default", tokens=tokens, token_types=types, scores=scores, merges=None,
              special_ids={}, add_bos=False, add_eos=False, add_space_prefix=add_space_prefix, chat_template=None,
              named_templates={}, source="tokenizer.model (SentencePiece)", rstrip_specials=rstrip)
    v.choices.append(("tokenizer.ggml.add_space_prefix", add_space_prefix, how))
    v.spm_unk = sp.unk_id() if 0 <= sp.unk_id() < n_sp and sp.IsUnknown(sp.unk_id()) else None
    return v


def _spm_prefix(tj: Any, sp: Any) -> tuple[bool, str]:
    """Does the tokenizer put U+2581 before the text (SentencePiece's dummy prefix)? transformers runs
    tokenizer.json, so its normalizer/pre-tokenizer decide; without one, the SentencePiece model itself."""
    if tj is not None:
        def walk(node: Any) -> list[dict[str, Any]]:
            if not isinstance(node, dict):
                return []
            subs = node.get("normalizers") or node.get("pretokenizers") or []
            return [node] + [x for s in subs for x in walk(s)]
        for node in walk(tj.get("normalizer")) + walk(tj.get("pre_tokenizer")):
            if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
                return True, "tokenizer.json normalizer prepends U+2581"
            if node.get("type") == "Metaspace":
                scheme = node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never")
                if scheme == "first":
                    # transformers puts U+2581 only at the very start of the text; llama.cpp can only put it at
                    # the start *and* after every special token. Chat prompts start with a special token
                    # ([INST], <s>), so off matches them exactly; on would add a stray U+2581 after each
                    # [INST]/[/INST]. Plain text then loses only its leading U+2581.
                    return False, ("tokenizer.json Metaspace prepend_scheme=first: off, so text after special "
                                   "tokens (chat prompts) tokenizes as in transformers; plain text that starts "
                                   "with a letter loses its leading U+2581")
                return scheme != "never", f"tokenizer.json Metaspace prepend_scheme={scheme}"
        return False, "tokenizer.json adds no U+2581 prefix"
    pieces = sp.EncodeAsPieces("a")
    on = bool(pieces) and pieces[0].startswith("\u2581")
    return on, "tokenizer.model adds a dummy prefix" if on else "tokenizer.model adds no dummy prefix"


def _special_ids(v: Vocab, tj: Any, tc: dict[str, Any], config: dict[str, Any], model_dir: Path) -> None:
    index: dict[str, int] = {}
    for i, t in enumerate(v.tokens):
        index.setdefault(t, i)
    for t in _added_tokens(tj):  # added-token content wins over a same-text normal token
        index[t["content"]] = int(t["id"])

    def from_text(text: str | None) -> int | None:
        return index.get(text) if text is not None else None

    for typ in ("bos", "eos", "unk", "pad", "sep", "mask"):  # sep/mask: only when tokenizer_config names them
        text = _token_content(tc.get(f"{typ}_token"))
        tid, why = from_text(text), f"tokenizer_config.json {typ}_token {text!r}"
        if text is not None and tid is None:
            raise ForgeError(f"{model_dir / 'tokenizer_config.json'}: {typ}_token {text!r} is not in the vocabulary",
                             "the tokenizer files disagree; re-save the tokenizer")
        if tid is None and typ in ("bos", "eos"):
            cid = config.get(f"{typ}_token_id")
            cid = cid[0] if isinstance(cid, list) and cid else cid
            if isinstance(cid, int) and 0 <= cid < len(v.tokens):
                tid, why = cid, f"config.json {typ}_token_id"
        if tid is None and typ == "unk":
            if v.model == "gpt2":
                tid = from_text(((tj or {}).get("model") or {}).get("unk_token"))
                why = "tokenizer.json model.unk_token"
            else:
                tid, why = v.spm_unk, "tokenizer.model unk piece"
        if tid is None and typ == "pad":
            pad = (tj or {}).get("padding") or {}
            tid, why = (pad.get("pad_id"), "tokenizer.json padding.pad_id") if "pad_id" in pad else (None, "")
        if tid is not None:
            v.special_ids[typ] = int(tid)
            v.choices.append((f"{typ}_token_id", int(tid), why))
    if "eos" not in v.special_ids:
        raise ForgeError(f"{model_dir}: no end-of-sequence token (eos_token in tokenizer_config.json, eos_token_id "
                         "in config.json)", "without one llama.cpp and Ollama never stop generating; set eos_token")
    if "bos" not in v.special_ids:
        # llama.cpp defaults a missing BOS to id 11 (gpt2) or 1 (SentencePiece); point it at a real token instead.
        v.special_ids["bos"] = v.special_ids["eos"]
        v.bos_is_eos_stand_in = True
        v.choices.append(("bos_token_id", v.special_ids["eos"],
                          "the tokenizer has no BOS; written as the EOS id (never added: add_bos is false) because "
                          "llama.cpp would otherwise default to an unrelated id"))


def _add_flags(v: Vocab, tj: Any, tc: dict[str, Any]) -> None:
    """add_bos/add_eos as transformers 5 decides them: explicit tokenizer_config flags rebuild the post-processor;
    otherwise tokenizer.json's post_processor; without one, nothing is added."""
    if "add_bos_token" in tc or "add_eos_token" in tc:
        # transformers drops add_bos_token when there is no BOS token (update_post_processor).
        v.add_bos = bool(tc.get("add_bos_token", False)) and not v.bos_is_eos_stand_in
        v.add_eos = bool(tc.get("add_eos_token", False))
        why = "tokenizer_config.json add_bos_token/add_eos_token"
    else:
        post = (tj or {}).get("post_processor")
        procs = (post.get("processors") or []) if isinstance(post, dict) and post.get("type") == "Sequence" \
            else ([post] if isinstance(post, dict) else [])
        bos_text = v.tokens[v.special_ids["bos"]]
        eos_text = v.tokens[v.special_ids["eos"]]
        why = "tokenizer.json has no post_processor"
        for p in procs:
            if p.get("type") == "TemplateProcessing":
                single = p.get("single") or []
                head = (single[0].get("SpecialToken") or {}).get("id") if single else None
                tail = (single[-1].get("SpecialToken") or {}).get("id") if single else None
                v.add_bos = head is not None and head == bos_text and not v.bos_is_eos_stand_in
                v.add_eos = tail is not None and tail == eos_text
                why = "tokenizer.json post_processor TemplateProcessing"
            elif p.get("type") in ("RobertaProcessing", "BertProcessing"):
                v.add_bos = v.add_eos = True
                why = f"tokenizer.json post_processor {p.get('type')}"
            elif p.get("type") == "ByteLevel" and why.startswith("tokenizer.json has no"):
                why = "tokenizer.json post_processor ByteLevel adds no special tokens"
    v.choices.append(("tokenizer.ggml.add_bos_token", v.add_bos, why))
    v.choices.append(("tokenizer.ggml.add_eos_token", v.add_eos, why))


def _chat_template(v: Vocab, tc: dict[str, Any], model_dir: Path) -> None:
    tmpl: Any = tc.get("chat_template")
    where = "tokenizer_config.json"
    if tmpl is None and (model_dir / "chat_template.jinja").is_file():
        tmpl, where = (model_dir / "chat_template.jinja").read_text(encoding="utf-8"), "chat_template.jinja"
        extra = sorted((model_dir / "additional_chat_templates").glob("*.jinja"))
        v.named_templates = {p.stem: p.read_text(encoding="utf-8") for p in extra}
    elif tmpl is None and (model_dir / "chat_template.json").is_file():
        tmpl, where = _load_json(model_dir / "chat_template.json").get("chat_template"), "chat_template.json"
    if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.pop("default", None)
        v.named_templates.update({k: t for k, t in named.items() if k and isinstance(t, str)})
    if tmpl is not None and not isinstance(tmpl, str):
        raise ForgeError(f"{model_dir / where}: chat_template is a {type(tmpl).__name__}, not text",
                         "fix the chat template")
    v.chat_template = tmpl
    if tmpl is not None:
        v.choices.append(("tokenizer.chat_template", f"{len(tmpl)} chars", f"from {where}"))
