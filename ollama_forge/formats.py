"""Chat-format registry: one file per format in ``modelfiles/``, the single source of truth for a chat format.

Training (the Hugging Face Jinja template, with ``{% generation %}`` markers for assistant-only loss), the Modelfile
writer (the Ollama Go TEMPLATE and the stop list), the stand-in server and in-process chat all read the same file.
The parity tests (tests/test_parity_*.py) render both templates over a corpus and prove them byte-identical; each
file carries ``proven_hash``, the hash of the template pair as proven, so a planner can say "proven" without Go.

Placeholders, bound per tokenizer/model by :meth:`ChatFormat.bind`:

- ``[[BOS]]`` (Jinja only): the tokenizer's BOS when the tokenizer adds one, else nothing. llama.cpp adds BOS at
  tokenization (GGUF ``tokenizer.ggml.add_bos_token``, converted from the same tokenizer) and the Go template never
  emits it, so training sees BOS exactly when serving does. (Where a SentencePiece tokenizer with a dummy prefix
  would tokenize "BOS text + plain text" differently from "BOS token + plain text", a space follows BOS: see
  :func:`bos_suffix_for`; only ``plain`` meets this, the other formats start with a special token.)
- ``[[EOS]]`` (Go template, stop list, end-of-turn list): the model's EOS text, for formats that end a turn with
  EOS (``mistral``, ``plain``). The Jinja side uses the ``eos_token`` variable instead.

The contract for what Go templates cannot express: Ollama gathers every system message into ``.System`` and merges
consecutive same-role messages (``normalize_conversation`` does exactly the same for training data), and Go has no
``trim``, so no training template trims content.

API: ``load(name)``, ``all_formats()``, ``detect(tokenizer | dir | gguf | text, override) -> Detection`` (unpacks as
``(format, reason)``), ``is_proven(fmt)``, ``install(tokenizer, fmt) -> InstallResult``,
``normalize_conversation(messages, default_system)``, ``render_prompt(fmt, messages, system)`` (what Ollama renders),
``from_ollama_template(text)``.

Heavy libraries (transformers, gguf) are imported only inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .errors import ForgeError
from .events import Sink, choice

# The top-level modelfiles/ folder of the repository (FORGE_MODELFILES points elsewhere, e.g. for an installed wheel).
# An installed wheel carries the folder as data files under <prefix>/share/ollama-forge/modelfiles (pyproject.toml).
def _registry_dir() -> Path:
    if os.environ.get("FORGE_MODELFILES"):
        return Path(os.environ["FORGE_MODELFILES"])
    checkout = Path(__file__).resolve().parent.parent / "modelfiles"
    if checkout.is_dir():
        return checkout
    import sys

    return Path(sys.prefix) / "share" / "ollama-forge" / "modelfiles"


REGISTRY_DIR = _registry_dir()
BOS_SLOT = "[[BOS]]"
EOS_SLOT = "[[EOS]]"
ROLES = ("system", "user", "assistant")

Message = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class KnownTemplate:
    """An official chat template this format stands for, recognised by the hash of its normalised text."""

    name: str
    sha256: str
    default_system: str | None = None


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    name: str
    description: str
    jinja: str  # training template (HF apply_chat_template), with {% generation %} around assistant output
    ollama_template: str  # Go text/template for the Modelfile TEMPLATE
    stop: tuple[str, ...]  # Modelfile PARAMETER stop values
    end_of_turn: tuple[str, ...]  # tokens that end an assistant turn (each is in `stop`; labels end with one)
    special_tokens: tuple[str, ...]  # tokens the format needs as single vocabulary entries
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # default Modelfile parameters
    default_system: str | None = None  # SYSTEM when the user gives none (set by the detected official variant)
    markers: tuple[str, ...] = ()  # substrings that identify a template of this family when no hash matches
    known: tuple[KnownTemplate, ...] = ()
    proven_hash: str | None = None  # sha256 of the template pair as proven by the parity test
    variant: str | None = None  # the official template detection matched, if any
    source: str = "registry"  # "registry" | "custom"
    bound: Mapping[str, Any] | None = None  # what bind() filled in (add_bos, eos_token), None while unbound
    unbound_hash: str | None = None  # template_hash() of the registry text this was bound from

    # ---- identity and proof ----
    def template_hash(self) -> str:
        """sha256 over the (unbound) Jinja, Go template and stop list: what the parity test proves."""
        if self.unbound_hash is not None:
            return self.unbound_hash
        return template_hash(self.jinja, self.ollama_template, self.stop)

    @property
    def proven(self) -> bool:
        return is_proven(self)

    # ---- binding per tokenizer / model ----
    def bind(self, *, add_bos: bool, eos_token: str | None, bos_suffix: str = "") -> "ChatFormat":
        """Fill the [[BOS]]/[[EOS]] slots for one tokenizer (training) or one GGUF (serving).

        ``bos_suffix`` follows BOS in the training text when the tokenizer needs it to tokenize "BOS as text" the way
        it (and llama.cpp) tokenize "BOS as a token" (see :func:`bos_suffix_for`); it is "" for every format whose
        text starts with a special token, and for byte-level BPE tokenizers.
        """
        if self.bound is not None:
            raise ValueError(f"chat format {self.name} is already bound ({dict(self.bound)})")
        needs_eos = any(EOS_SLOT in s for s in (self.ollama_template, *self.stop, *self.end_of_turn,
                                                  *self.special_tokens))
        if needs_eos and not eos_token:
            raise ForgeError(f"chat format {self.name!r} ends turns with the model's EOS token, but the model has none",
                             "pick another format with --chat-format (or chat_format: in the recipe)")
        eos = eos_token or ""

        def sub(s: str) -> str:
            return s.replace(EOS_SLOT, eos)

        bos = ("{{- bos_token + %r }}" % bos_suffix if bos_suffix else "{{- bos_token }}") if add_bos else ""
        return dataclasses.replace(
            self, jinja=self.jinja.replace(BOS_SLOT, bos), ollama_template=sub(self.ollama_template),
            stop=_dedupe(sub(s) for s in self.stop), end_of_turn=_dedupe(sub(s) for s in self.end_of_turn),
            special_tokens=_dedupe(sub(s) for s in self.special_tokens),
            bound={"add_bos": bool(add_bos), "eos_token": eos_token, "bos_suffix": bos_suffix if add_bos else ""},
            unbound_hash=self.template_hash())

    def bind_to_tokenizer(self, tokenizer: Any) -> "ChatFormat":
        add_bos = tokenizer_adds_bos(tokenizer)
        eos = getattr(tokenizer, "eos_token", None)
        suffix = bos_suffix_for(tokenizer, self, eos) if add_bos else ""
        return self.bind(add_bos=add_bos, eos_token=eos, bos_suffix=suffix)

    def bos_text(self, bos_token: str | None) -> str:
        """What the training text has in front of the serving text: BOS (+ suffix) when bound with add_bos."""
        if not self.bound or not self.bound.get("add_bos"):
            return ""
        return (bos_token or "") + self.bound.get("bos_suffix", "")

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON shape of ``forge formats show NAME --json`` (plus a few informative keys)."""
        return {
            "name": self.name,
            "jinja": self.jinja,
            "ollama_template": self.ollama_template,
            "stop": list(self.stop),
            "parameters": dict(self.parameters),
            "description": self.description,
            "end_of_turn": list(self.end_of_turn),
            "special_tokens": list(self.special_tokens),
            "default_system": self.default_system,
            "proven": self.proven,
            "proven_hash": self.proven_hash,
        }


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for s in items:
        if s and s not in out:
            out.append(s)
    return tuple(out)


def template_hash(jinja: str, ollama_template: str, stop: Sequence[str]) -> str:
    blob = json.dumps({"jinja": jinja, "ollama_template": ollama_template, "stop": list(stop)},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def is_proven(fmt: ChatFormat) -> bool:
    """True when the format's template pair is the one the parity test proved (shipped ``proven_hash``)."""
    return fmt.source == "registry" and fmt.proven_hash is not None and fmt.proven_hash == fmt.template_hash()


# ---------------------------------------------------------------------------------------------------------------
# Loading the registry
# ---------------------------------------------------------------------------------------------------------------

_REQUIRED = ("name", "description", "jinja", "ollama_template", "stop", "end_of_turn")


def _load_file(path: Path) -> ChatFormat:
    import yaml  # light, but only the registry needs it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ForgeError(f"{path}: not valid YAML: {e}", "fix the chat-format file") from e
    if not isinstance(data, dict):
        raise ForgeError(f"{path}: expected a mapping of keys", "see modelfiles/chatml.yaml for the layout")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ForgeError(f"{path}: missing key(s) {', '.join(missing)}", "see modelfiles/chatml.yaml for the layout")
    if data["name"] != path.stem:
        raise ForgeError(f"{path}: name {data['name']!r} differs from the file name", f"use name: {path.stem}")
    detect = data.get("detect") or {}
    known = tuple(KnownTemplate(name=k["name"], sha256=k["sha256"], default_system=k.get("default_system"))
                  for k in detect.get("known") or ())
    fmt = ChatFormat(
        name=data["name"], description=str(data["description"]).strip(), jinja=data["jinja"],
        ollama_template=data["ollama_template"], stop=tuple(data["stop"]), end_of_turn=tuple(data["end_of_turn"]),
        special_tokens=tuple(data.get("special_tokens") or ()), parameters=dict(data.get("parameters") or {}),
        default_system=data.get("default_system"), markers=tuple(detect.get("markers") or ()), known=known,
        proven_hash=data.get("proven_hash"))
    not_stopped = [t for t in fmt.end_of_turn if t not in fmt.stop]
    if not_stopped:
        raise ForgeError(f"{path}: end-of-turn token(s) {not_stopped} missing from stop",
                         "every end-of-turn token must be a stop string")
    return fmt


@functools.lru_cache(maxsize=None)
def _registry(directory: str) -> dict[str, ChatFormat]:
    if not Path(directory).is_dir():
        raise ForgeError(f"chat-format registry {directory} not found",
                         "run from the ollama-forge checkout, or set FORGE_MODELFILES to its modelfiles/ folder")
    out = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        fmt = _load_file(path)
        out[fmt.name] = fmt
    return out


def all_formats(directory: str | Path | None = None) -> list[ChatFormat]:
    return list(_registry(str(directory or REGISTRY_DIR)).values())


def names(directory: str | Path | None = None) -> list[str]:
    return [f.name for f in all_formats(directory)]


def load(name: str, directory: str | Path | None = None) -> ChatFormat:
    reg = _registry(str(directory or REGISTRY_DIR))
    key = name.strip().lower()
    if key not in reg:
        raise ForgeError(f"unknown chat format {name!r}", f"choose one of: {', '.join(reg)} (forge formats)")
    return reg[key]


def custom(jinja: str, ollama_template: str, stop: Sequence[str], end_of_turn: Sequence[str],
           name: str = "custom") -> ChatFormat:
    """A user-supplied template pair: usable, but reported as unproven (no parity run vouches for it)."""
    return ChatFormat(name=name, description="custom template (unproven)", jinja=jinja,
                      ollama_template=ollama_template, stop=tuple(stop), end_of_turn=tuple(end_of_turn),
                      special_tokens=(), source="custom")


# ---------------------------------------------------------------------------------------------------------------
# Conversations: the normalisation Ollama applies, mirrored for training
# ---------------------------------------------------------------------------------------------------------------

def normalize_conversation(messages: Sequence[Message], default_system: str | None = None) -> list[dict[str, str]]:
    """Shape a conversation exactly as Ollama shapes a chat request before its template runs.

    1. Roles are lower-cased. If ``default_system`` is given (the Modelfile SYSTEM) and the first message is not a
       system message, a system message is put first (Ollama's chat handler does this).
    2. Consecutive messages of one role are merged with ``"\\n\\n"`` (tool messages excepted), with system messages
       still in place (Ollama's ``collate``).
    3. Every system message's content is gathered, joined with ``"\\n\\n"``, into one leading system message
       (Ollama's ``.System``); it is dropped when empty, as ``{{ if .System }}`` is false for "".

    The result renders identically through a registry format's Jinja and its Go template. Note that step 3 can
    leave two user turns in a row (``user, system, user``): :func:`conversation_problems` reports that.
    """
    msgs: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role = str(m.get("role", "")).lower()
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ForgeError(f"message {i}: content must be a string, got {type(content).__name__}",
                             "multimodal or structured content is not supported by these chat formats")
        msgs.append({"role": role, "content": content})
    if default_system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": default_system})
    system_parts = [m["content"] for m in msgs if m["role"] == "system"]
    collated: list[dict[str, str]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {"role": m["role"], "content": collated[-1]["content"] + "\n\n" + m["content"]}
        else:
            collated.append(dict(m))
    out = [m for m in collated if m["role"] != "system"]
    system = "\n\n".join(system_parts)
    if system:
        out.insert(0, {"role": "system", "content": system})
    return out


def conversation_problems(messages: Sequence[Message]) -> list[str]:
    """What a normalised conversation has that the registry formats do not train well on (empty = fine)."""
    problems = []
    body = [m for m in messages if m.get("role") != "system"]
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            problems.append(f"message {i}: role {role!r} is not supported (system, user, assistant)")
        elif role == "system" and i != 0:
            problems.append(f"message {i}: system message not first (normalize_conversation gathers them)")
    for a, b in zip(body, body[1:]):
        if a.get("role") == b.get("role"):
            problems.append(f"two {a.get('role')} turns in a row (a system message between them splits them)")
            break
    if body and body[0].get("role") != "user":
        problems.append("the first turn after the system message is not a user turn")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Rendering the Jinja side without transformers (stand-in server, in-process chat, planner previews)
# ---------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _compile(jinja: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # {% generation %}…{% endgeneration %} only marks assistant output for training masks: render the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    # The same environment options transformers uses for chat templates (trim_blocks, lstrip_blocks).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(jinja)


def render_jinja(fmt: ChatFormat, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                 bos_token: str | None = None, eos_token: str | None = None) -> str:
    """Render a bound format's Jinja template the way ``apply_chat_template(tokenize=False)`` does."""
    if BOS_SLOT in fmt.jinja:
        raise ValueError("bind() the format before rendering it")
    import jinja2

    try:
        return _compile(fmt.jinja).render(messages=[dict(m) for m in messages],
                                          add_generation_prompt=add_generation_prompt,
                                          bos_token=bos_token or "", eos_token=eos_token or "")
    except jinja2.exceptions.TemplateError as e:
        raise ForgeError(f"chat format {fmt.name}: {e}", "normalise the conversation (roles system/user/assistant, "
                         "system first) before rendering") from e


def render_prompt(fmt: ChatFormat, messages: Sequence[Message], *, system: str | None = None,
                  eos_token: str | None = None) -> str:
    """The exact prompt text Ollama renders from the format's Go TEMPLATE for a chat request.

    By the parity proof this is the Jinja rendering (with the generation prompt) of the conversation normalised as
    Ollama normalises it, without BOS (llama.cpp adds BOS as a token). ``system`` plays the Modelfile SYSTEM.
    """
    if fmt.bound is not None:
        eos_token = eos_token if eos_token is not None else fmt.bound.get("eos_token")
        fmt = load(fmt.name) if fmt.source == "registry" else fmt
    if fmt.bound is None:
        fmt = fmt.bind(add_bos=False, eos_token=eos_token)
    eos = eos_token
    return render_jinja(fmt, normalize_conversation(messages, default_system=system), add_generation_prompt=True,
                        bos_token="", eos_token=eos)


def from_ollama_template(template: str, directory: str | Path | None = None) -> ChatFormat | None:
    """The registry format (bound to its EOS) whose Go TEMPLATE is exactly ``template``, or None.

    For whoever receives a TEMPLATE rather than a format name (the stand-in server's /api/create, a Modelfile):
    once matched, :func:`render_prompt` renders what Ollama would, without Go.
    """
    for fmt in all_formats(directory):
        if EOS_SLOT not in fmt.ollama_template:
            if fmt.ollama_template == template:
                return fmt.bind(add_bos=False, eos_token=None) if not _needs_eos(fmt) else None
            continue
        parts = [re.escape(p) for p in fmt.ollama_template.split(EOS_SLOT)]
        pattern = "(?P<eos>.+?)".join(parts[:2]) + "".join("(?P=eos)" + p for p in parts[2:])
        m = re.fullmatch(pattern, template, re.S)
        if m:
            return fmt.bind(add_bos=False, eos_token=m.group("eos"))
    return None


def _needs_eos(fmt: ChatFormat) -> bool:
    return any(EOS_SLOT in s for s in (fmt.ollama_template, *fmt.stop, *fmt.end_of_turn, *fmt.special_tokens))


# ---------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------

def normalize_template_text(text: str) -> str:
    """Whitespace-, quote- and whitespace-control-insensitive form of a Jinja template, for comparison."""
    t = text.replace("\r\n", "\n")
    t = re.sub(r"\{([{%#])-", r"{\1", t)
    t = re.sub(r"-([}%#])\}", r"\1}", t)
    t = re.sub(r"([{%#])\+", r"\1", t)
    t = t.replace("'", '"')
    # A newline inside a string literal may be written raw or as an escape (HF JSON vs .jinja copies): drop both,
    # with all other whitespace. This also equates "\n" with "\n\n"; detection only vouches for the family.
    t = re.sub(r"\\[nrt]", "", t)
    return re.sub(r"\s+", "", t)


def normalized_hash(text: str) -> str:
    return hashlib.sha256(normalize_template_text(text).encode("utf-8")).hexdigest()


@dataclasses.dataclass
class Detection:
    """Result of :func:`detect`. Unpacks as ``fmt, reason = detect(...)``; ``fmt`` is None when unknown."""

    format: ChatFormat | None
    reason: str
    how: str  # "override" | "registry" | "official" | "markers" | "vocabulary" | "unknown"
    variant: str | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.format, self.reason))

    @property
    def exact(self) -> bool:
        return self.how in ("override", "registry", "official")


def chat_template_of(source: Any) -> str | None:
    """The chat template held by a tokenizer, an HF model directory, a GGUF file, a template file or string."""
    if source is None:
        return None
    if isinstance(source, str) and ("{%" in source or "{{" in source or not source.strip()):
        return source or None
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_file():
            from .modelref import is_gguf_file

            if is_gguf_file(p):
                from .modelfile import read_gguf_info

                return read_gguf_info(p).chat_template
            return p.read_text(encoding="utf-8")
        if (p / "chat_template.jinja").is_file():
            return (p / "chat_template.jinja").read_text(encoding="utf-8")
        cfg = p / "tokenizer_config.json"
        if cfg.is_file():
            return _pick_template(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
        if isinstance(source, str) and not p.exists():
            return source  # template text without Jinja syntax: compared as is
        return None
    return _pick_template(getattr(source, "chat_template", None))


def _pick_template(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        return value.get("default") or next(iter(value.values()), None)
    if isinstance(value, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return None


# A Llama-2 template carries [INST] like Mistral's but wraps the system prompt in <<SYS>>: not our mistral format.
_NOT_MISTRAL = ("<<SYS>>",)


def detect(source: Any = None, override: str | None = None, *, sink: Sink | None = None,
           directory: str | Path | None = None, log: bool = True) -> Detection:
    """Match a chat template (tokenizer, HF directory, or template text) to a registry format.

    Order: an explicit ``override`` (``--chat-format`` / recipe ``chat_format``); the registry's own Jinja (a model
    trained by forge); a known official template (hash of the normalised text); the format's marker tokens; for a
    tokenizer without any template, the format whose special tokens its vocabulary already has. Anything else is
    "unknown" with the reason: the caller decides between an error and a fallback. The choice is logged.
    """
    det = _detect(source, override, directory)
    if log:
        choice("chat_format", det.format.name if det.format else "unknown", det.reason, sink=sink)
    return det


def _detect(source: Any, override: str | None, directory: str | Path | None) -> Detection:
    formats = all_formats(directory)
    if override:
        fmt = load(override, directory)
        text = chat_template_of(source) if source is not None else None
        why = "chosen explicitly (--chat-format / recipe chat_format)"
        if text:
            auto = _detect_text(text, formats)
            if auto.format is not None and auto.format.name != fmt.name:
                why += f"; the model's own template looks like {auto.format.name} ({auto.reason})"
        return Detection(fmt, why, "override")
    text = chat_template_of(source)
    if text:
        return _detect_text(text, formats)
    if source is not None and hasattr(source, "get_vocab"):
        return _detect_vocab(source, formats)
    return Detection(None, "no chat template to match (a base model?): pass --chat-format", "unknown")


def _detect_text(text: str, formats: list[ChatFormat]) -> Detection:
    norm = normalize_template_text(text)
    digest = hashlib.sha256(norm.encode("utf-8")).hexdigest()
    for fmt in formats:
        for add_bos, suffix in ((True, ""), (True, " "), (False, "")):
            jinja = fmt.bind(add_bos=add_bos, eos_token="</s>", bos_suffix=suffix).jinja
            if normalize_template_text(jinja) == norm:
                return Detection(fmt, f"the template is forge's own {fmt.name} template", "registry")
    for fmt in formats:
        for known in fmt.known:
            if known.sha256 == digest:
                var = dataclasses.replace(fmt, variant=known.name,
                                          default_system=known.default_system or fmt.default_system)
                extra = f"; its default system prompt is kept: {known.default_system!r}" if known.default_system else ""
                return Detection(var, f"the template is the official {known.name} template{extra}", "official",
                                 known.name)
    hits = []
    for fmt in formats:
        if fmt.markers and all(m in text for m in fmt.markers):
            if fmt.name == "mistral" and any(x in text for x in _NOT_MISTRAL):
                continue
            hits.append(fmt)
    if len(hits) == 1:
        fmt = hits[0]
        return Detection(fmt, f"not a known template, but it uses {fmt.name}'s tokens ({', '.join(fmt.markers)}); "
                              f"training and serving will both use forge's {fmt.name} template", "markers")
    if len(hits) > 1:
        return Detection(None, f"template matches several formats ({', '.join(f.name for f in hits)}): "
                               "pass --chat-format", "unknown")
    return Detection(None, "the chat template matches no known format: pass --chat-format to train and serve "
                           "with one of forge's formats", "unknown")


def _detect_vocab(tokenizer: Any, formats: list[ChatFormat]) -> Detection:
    vocab = tokenizer.get_vocab()
    best = None
    for fmt in formats:
        needed = [t for t in fmt.special_tokens if EOS_SLOT not in t]
        if needed and all(t in vocab for t in needed):
            # Prefer the format reusing the most existing tokens (llama3 over plain, ...).
            if best is None or len(needed) > len(best[1]):
                best = (fmt, needed)
    if best is not None:
        fmt, needed = best
        return Detection(fmt, f"no chat template; the vocabulary already has {', '.join(needed)}, so {fmt.name} "
                              "needs no new tokens", "vocabulary")
    plain = next((f for f in formats if f.name == "plain"), None)
    if plain is not None:
        return Detection(plain, "no chat template and no chat tokens in the vocabulary: plain format, which only "
                                "needs the EOS token", "vocabulary")
    return Detection(None, "no chat template: pass --chat-format", "unknown")


# ---------------------------------------------------------------------------------------------------------------
# Installing a format on a tokenizer (training)
# ---------------------------------------------------------------------------------------------------------------

def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Does the tokenizer put BOS in front of plain text? (llama.cpp's add_bos_token is converted from this.)"""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos_id


def bos_suffix_for(tokenizer: Any, fmt: ChatFormat, eos_token: str | None = None) -> str:
    """"" or " ": what must follow BOS in the training text so it tokenizes like BOS-as-a-token + serving text.

    A SentencePiece tokenizer with a dummy prefix puts "▁" before the first text of a string, and llama.cpp puts it
    after every special token, BOS included; but text written right after a BOS *string* gets no "▁" from the
    Hugging Face tokenizer. A format whose text starts with a special token ([INST], <start_of_turn>) never meets
    this; one that starts with plain text (``plain``) needs a space after BOS on such tokenizers. Decided by trying
    both on a one-turn conversation and keeping the one whose ids equal the tokenizer's own ids of the serving text.
    """
    probe = [{"role": "user", "content": "Hello"}]
    serving = render_jinja(fmt.bind(add_bos=False, eos_token=eos_token or "</s>"), probe, eos_token=eos_token)
    want = tokenizer(serving)["input_ids"]
    for suffix in ("", " "):
        text = (tokenizer.bos_token or "") + suffix + serving
        if tokenizer(text, add_special_tokens=False)["input_ids"] == want:
            return suffix
    return ""


# Reserved / unused slots a vocabulary ships for later use (Llama-3, Gemma, Qwen, Phi-3 ...).
RESERVED_TOKEN = re.compile(r"^(<\|reserved_special_token_\d+\|>|<unused\d+>|<\|unused_?\d+\|>|<\|extra_\d+\|>|"
                            r"\[control_\d+\]|<\|reserved_\d+\|>|<reserved_\d+>|<\|placeholder\d+\|>)$")


@dataclasses.dataclass
class InstallResult:
    format: ChatFormat  # bound to the tokenizer
    reused: list[str]  # special tokens already single entries of the vocabulary
    repurposed: dict[str, str]  # new token text -> the reserved/unused entry it took over (same id)
    added: list[str]  # tokens appended to the vocabulary
    vocab_size_before: int
    vocab_size_after: int
    token_ids: dict[str, int]  # every special token of the format -> its id

    @property
    def vocab_grew(self) -> bool:
        return self.vocab_size_after > self.vocab_size_before

    @property
    def new_token_ids(self) -> list[int]:
        """Rows of embed_tokens/lm_head that were never trained for their new meaning: train them."""
        return [self.token_ids[t] for t in (*self.repurposed, *self.added)]

    @property
    def merged_export_only(self) -> bool:
        """A LoRA adapter cannot carry new embedding rows or a changed tokenizer: export merged weights only."""
        return bool(self.added or self.repurposed)

    def summary(self) -> str:
        parts = [f"chat format {self.format.name}"]
        if self.reused:
            parts.append(f"reuses {', '.join(self.reused)}")
        if self.repurposed:
            parts.append("takes over " + ", ".join(f"{old} as {new}" for new, old in self.repurposed.items()))
        if self.added:
            parts.append(f"adds {', '.join(self.added)} (vocabulary {self.vocab_size_before} -> "
                         f"{self.vocab_size_after})")
        if self.merged_export_only:
            parts.append("merged export only: a LoRA adapter cannot carry new token rows")
        return "; ".join(parts)


def _single_id(tokenizer: Any, token: str) -> int | None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def install(tokenizer: Any, fmt: ChatFormat, *, sink: Sink | None = None,
            allow_repurpose: bool = True) -> InstallResult:
    """Install ``fmt`` as the tokenizer's chat template, so training and serving share one template.

    Special tokens the format needs are reused when the vocabulary has them; otherwise a reserved/unused entry is
    taken over (same id, no new row; the tokenizer still changes); otherwise the token is added, which grows the
    vocabulary. Either of the last two makes the run "merged export only", and the rows of those tokens must be
    trained (``InstallResult.new_token_ids``).
    """
    before = len(tokenizer)
    eos = getattr(tokenizer, "eos_token", None)
    needed = _dedupe(t.replace(EOS_SLOT, eos or "") for t in fmt.special_tokens)
    vocab = tokenizer.get_vocab()
    reused, missing, to_mark = [], [], []
    for tok in needed:
        tid = _single_id(tokenizer, tok)
        if tid is not None and vocab.get(tok) == tid:
            reused.append(tok)
        elif tok in vocab:
            to_mark.append(tok)  # a plain vocabulary entry: register it as special so text never splits it
        else:
            missing.append(tok)
    if to_mark:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in to_mark], special_tokens=True)
        reused.extend(to_mark)
    repurposed: dict[str, str] = {}
    if missing and allow_repurpose:
        repurposed = _repurpose_reserved(tokenizer, missing)
        missing = [t for t in missing if t not in repurposed]
    if missing:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    # Bind only now: whether BOS needs a suffix depends on the format's tokens being special tokens already.
    bound = fmt.bind_to_tokenizer(tokenizer) if fmt.bound is None else fmt
    tokenizer.chat_template = bound.jinja
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in bound.special_tokens}
    for t, i in ids.items():
        if _single_id(tokenizer, t) != i:
            raise ForgeError(f"chat format {fmt.name}: token {t!r} does not encode to one id after installing",
                             "report this tokenizer; pass another --chat-format meanwhile")
    result = InstallResult(format=bound, reused=reused, repurposed=repurposed, added=missing,
                           vocab_size_before=before, vocab_size_after=len(tokenizer), token_ids=ids)
    choice("chat_template", bound.name, result.summary(), sink=sink)
    return result


def _repurpose_reserved(tokenizer: Any, wanted: list[str]) -> dict[str, str]:
    """Rename unused reserved special tokens to the tokens the format needs (fast tokenizers only)."""
    backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {}
    from tokenizers import Tokenizer

    spec = json.loads(backend.to_str())
    added = spec.get("added_tokens") or []
    free = [a for a in added if a.get("special") and RESERVED_TOKEN.match(a.get("content", ""))]
    free.sort(key=lambda a: a["id"])
    if not free:
        return {}
    model_vocab = (spec.get("model") or {}).get("vocab")
    mapping: dict[str, str] = {}
    for new, slot in zip(wanted, free):
        old = slot["content"]
        slot.update(content=new, normalized=False, lstrip=False, rstrip=False, single_word=False)
        if isinstance(model_vocab, dict) and old in model_vocab:
            model_vocab[new] = model_vocab.pop(old)
        elif isinstance(model_vocab, list):  # Unigram: [[piece, score], ...]
            for entry in model_vocab:
                if entry[0] == old:
                    entry[0] = new
        mapping[new] = old
    new_backend = Tokenizer.from_str(json.dumps(spec))
    try:
        tokenizer._tokenizer = new_backend
        # transformers caches the added-token maps; rebuild them from the backend when it can.
        for new, old in mapping.items():
            tid = new_backend.token_to_id(new)
            dec = getattr(tokenizer, "_added_tokens_decoder", None)
            if isinstance(dec, dict) and tid in dec:
                from tokenizers import AddedToken

                dec[tid] = AddedToken(new, special=True, normalized=False)
            enc = getattr(tokenizer, "_added_tokens_encoder", None)
            if isinstance(enc, dict):
                enc.pop(old, None)
                enc[new] = tid
    except Exception:
        return {}
    # Verify: each new token must now encode to the reserved slot's id, alone.
    for new in mapping:
        if _single_id(tokenizer, new) != new_backend.token_to_id(new):
            return {}
    return mapping
