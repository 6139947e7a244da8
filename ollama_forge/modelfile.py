"""Ollama Modelfile: a dataclass that renders and parses (round trip), following Ollama's own parser exactly.

Ollama's parser (parser/parser.go) is a small state machine with no escape processing: a value runs to the end of
the line, or is wrapped in one double quote or in three (possibly over several lines), and the quotes are stripped
verbatim. So some strings cannot be written at all (a line of a triple-quoted value that ends in three double
quotes, a non-printable character, which the parser silently drops, ...). ``render`` picks the plainest quoting that
parses back to the exact value, checked by running this module's port of the parser on it, and refuses anything
else with a one-line :class:`ForgeError`, never writing a broken file.

Parameter names and value types are checked against Ollama's ``api.Options`` (the ``PARAMETER`` list of
shared/reference/ollama.md): ints for ``num_*``/``seed``/``top_k``..., float32 for sampling weights, a bool for
``use_mmap``, and ``stop`` as a list (one ``PARAMETER stop`` line per value).

:func:`for_model` builds the Modelfile for a GGUF (or HF directory): TEMPLATE and stops from its chat format,
``num_ctx`` at least the training max length (Ollama's default context silently truncates), SYSTEM from training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import struct
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import ForgeError
from .events import Sink, choice, emit

log = logging.getLogger("ollama_forge")

# ---------------------------------------------------------------------------------------------------------------
# Ollama's parameter list (api.Options / api.Runner JSON names) and their Go types
# ---------------------------------------------------------------------------------------------------------------

INT, FLOAT, BOOL, STRINGS = "int", "float", "bool", "string list"
PARAMETERS: dict[str, str] = {
    "num_keep": INT, "seed": INT, "num_predict": INT, "top_k": INT, "top_p": FLOAT, "min_p": FLOAT,
    "typical_p": FLOAT, "repeat_last_n": INT, "temperature": FLOAT, "repeat_penalty": FLOAT,
    "presence_penalty": FLOAT, "frequency_penalty": FLOAT, "stop": STRINGS, "num_ctx": INT, "num_batch": INT,
    "num_gpu": INT, "main_gpu": INT, "use_mmap": BOOL, "num_thread": INT, "draft_num_predict": INT,
}
# The Ollama CLI warns about these and drops them.
DEPRECATED = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "mirostat",
                        "mirostat_tau", "mirostat_eta"})
MESSAGE_ROLES = ("system", "user", "assistant")
# Commands Ollama accepts that this dataclass carries through without interpreting them.
PASSTHROUGH = ("requires", "renderer", "parser", "draft")
_COMMANDS = ("from", "license", "template", "system", "adapter", "parameter", "message") + PASSTHROUGH

_INT64 = (-(2 ** 63), 2 ** 63 - 1)
_FLOAT32_MAX = 3.4028234663852886e38
_GO_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _float32_overflows(x: float) -> bool:
    try:
        struct.pack("<f", x)
        return False
    except OverflowError:
        return True


def coerce_parameter(name: str, value: Any, where: str = "PARAMETER") -> Any:
    """Check a parameter name and convert ``value`` (a string from a file or CLI, or a Python value) to its type.

    Strings follow Go's parsers (strconv.ParseInt base 10, ParseFloat 32-bit, ParseBool). ``stop`` takes a string
    or a list of strings and returns a list.
    """
    if name in DEPRECATED:
        raise ForgeError(f"{where}: parameter '{name}' is deprecated: Ollama ignores it", "remove it")
    kind = PARAMETERS.get(name)
    if kind is None:
        close = [p for p in PARAMETERS if p.startswith(name[:3])] if name else []
        raise ForgeError(f"{where}: unknown parameter '{name}'",
                         f"Ollama knows: {', '.join(PARAMETERS)}" + (f" (did you mean {close[0]}?)" if close else ""))
    if kind == STRINGS:
        values = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(v, str) for v in values):
            raise ForgeError(f"{where}: {name} values must be strings, got {values!r}", "quote each stop string")
        return values
    if kind == BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in _GO_BOOL:
            return _GO_BOOL[value]
        raise ForgeError(f"{where}: invalid bool value {value!r} for {name}", "use true or false")
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ForgeError(f"{where}: invalid int value {value!r} for {name}", "use a whole number, e.g. 4096")
        if isinstance(value, str):
            if not re.fullmatch(r"[+-]?[0-9]+", value):
                raise ForgeError(f"{where}: invalid int value {value!r} for {name}", "use a whole number, e.g. 4096")
            value = int(value)
        if not _INT64[0] <= value <= _INT64[1]:
            raise ForgeError(f"{where}: {name} value {value} is out of the 64-bit range", "use a smaller number")
        return value
    # FLOAT (Go float32)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ForgeError(f"{where}: invalid float value {value!r} for {name}", "use a number, e.g. 0.7")
    if isinstance(value, str):
        text = value
        if not re.fullmatch(r"[+-]?(\d+(_\d+)*(\.(\d+(_\d+)*)?)?|\.\d+(_\d+)*)([eE][+-]?\d+)?", text):
            raise ForgeError(f"{where}: invalid float value {value!r} for {name}", "use a number, e.g. 0.7")
        value = float(text.replace("_", ""))
    value = float(value)
    if not math.isfinite(value) or _float32_overflows(value):
        raise ForgeError(f"{where}: {name} value {value!r} is not a finite 32-bit float", "use a number, e.g. 0.7")
    return value


def format_parameter_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") and "e" not in text else text
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# The parser: a port of Ollama's state machine (parser/parser.go ParseFile)
# ---------------------------------------------------------------------------------------------------------------

_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


def _is_space(c: str) -> bool:
    return c == " " or c == "\t"


def _is_newline(c: str) -> bool:
    return c == "\r" or c == "\n"


def _is_alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def is_printable(c: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


_GO_TRIM = " \t\r\n\v\f\x85\xa0"


class _ParseError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def parse_commands(text: str) -> list[tuple[str, str, int]]:
    """(command, args, line) triples exactly as Ollama's parser produces them (command names lower-case, FROM is
    "model", a PARAMETER's name is its command, MESSAGE args are "role: content")."""
    if text.startswith("\ufeff"):
        text = text[1:]
    commands: list[tuple[str, str, int]] = []
    state = _NIL
    buf: list[str] = []
    name = ""
    role = ""
    line = 1
    start_line = 1
    for c in text:
        if _is_newline(c):
            line += 1
        nxt, r = _step(c, state, line)
        if nxt != state:
            if state == _NAME:
                word = "".join(buf)
                if word.lower() not in _COMMANDS:
                    raise _ParseError(line, f"unknown command {word!r}: a Modelfile command must be one of "
                                            + ", ".join(x.upper() for x in _COMMANDS))
                low = word.lower()
                if low == "from":
                    name = "model"
                elif low == "parameter":
                    nxt = _PARAMETER
                elif low == "message":
                    nxt = _MESSAGE
                    name = "message"
                else:
                    name = low
                start_line = line
            elif state == _PARAMETER:
                name = "".join(buf)
            elif state == _MESSAGE:
                role = "".join(buf)
                if role not in MESSAGE_ROLES:
                    raise _ParseError(line, f"MESSAGE role {role!r} must be one of system, user, assistant")
            elif state == _VALUE:
                value, ok = _unquote("".join(buf).strip(_GO_TRIM))
                if not ok or _is_space(c):
                    buf.append(c)
                    continue
                if role:
                    value = f"{role}: {value}"
                    role = ""
                commands.append((name, value, start_line))
            buf = []
            state = nxt
        if r is not None and is_printable(r):
            buf.append(r)
    if state == _VALUE:
        value, ok = _unquote("".join(buf).strip(_GO_TRIM))
        if not ok:
            raise _ParseError(start_line, "unterminated quoted value (unexpected end of file)")
        if role:
            value = f"{role}: {value}"
        commands.append((name, value, start_line))
    elif state not in (_NIL, _COMMENT):
        raise _ParseError(line, "unexpected end of file (a command without a value)")
    return commands


def _step(c: str, state: int, line: int) -> tuple[int, str | None]:
    if state == _NIL:
        if c == "#":
            return _COMMENT, None
        if _is_space(c) or _is_newline(c):
            return _NIL, None
        return _NAME, c
    if state == _NAME:
        if _is_alpha(c):
            return _NAME, c
        if _is_space(c):
            return _VALUE, None
        raise _ParseError(line, "a command name must be followed by a space and a value")
    if state == _VALUE:
        if _is_newline(c) or _is_space(c):
            return _NIL, c
        return _VALUE, c
    if state == _PARAMETER:
        if _is_alpha(c) or ("0" <= c <= "9") or c == "_":
            return _PARAMETER, c
        if _is_space(c):
            return _VALUE, None
        raise _ParseError(line, f"PARAMETER name has {c!r} (letters, digits and '_' only)")
    if state == _MESSAGE:
        if _is_alpha(c):
            return _MESSAGE, c
        if _is_space(c):
            return _VALUE, None
        raise _ParseError(line, f"MESSAGE role has {c!r}; write MESSAGE <role> <content>")
    # comment
    if _is_newline(c):
        return _NIL, None
    return _COMMENT, None


# ---------------------------------------------------------------------------------------------------------------
# Quoting for render
# ---------------------------------------------------------------------------------------------------------------

def _parses_back(quoted: str) -> str | None:
    """The value Ollama reads from ``X <quoted>\\n``, or None if it reads something else or more commands."""
    try:
        cmds = parse_commands(f"SYSTEM {quoted}\n")
    except _ParseError:
        return None
    if len(cmds) != 1:
        return None
    return cmds[0][1]


def unrepresentable_reason(value: str) -> str | None:
    bad = next((c for c in value if not (is_printable(c) or c in " \t\r\n")), None)
    if bad is not None:
        return (f"character U+{ord(bad):04X} at position {value.index(bad)} is not printable; Ollama's parser "
                "drops it silently")
    return None


def quote(value: str, what: str = "value") -> str:
    """The plainest way to write ``value`` so Ollama reads it back exactly; ForgeError if there is none."""
    why = unrepresentable_reason(value)
    if why:
        raise ForgeError(f"{what} cannot be written in a Modelfile: {why}", "remove or replace that character")
    if value == "":
        candidates = ['""']
    elif "\n" in value or "\r" in value or value != value.strip(" \t"):
        # Multi-line or padded: quoted; three quotes when the value holds one (the way `ollama show` writes it).
        candidates = [f'"""{value}"""', f'"{value}"'] if '"' in value else [f'"{value}"', f'"""{value}"""']
    else:
        candidates = [value, f'"{value}"', f'"""{value}"""']
    for q in candidates:
        if _parses_back(q) == value:
            return q
    reason = "Ollama's parser has no escapes"
    if '"""' in value:
        reason = 'it contains """ where a quoted value would end, and ' + reason
    elif value.startswith('""'):
        reason = 'it starts with "" (read as the start of """), and ' + reason
    elif re.search(r'"[ \t]*[\r\n]', value):
        reason = 'a line of it ends with ", where a quoted value would end, and ' + reason
    raise ForgeError(f"{what} cannot be written in a Modelfile: {reason}",
                     'rephrase it (e.g. avoid """ or a line ending in a double quote)')


# ---------------------------------------------------------------------------------------------------------------
# The dataclass
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Message:
    role: str  # system | user | assistant
    content: str


@dataclasses.dataclass
class Modelfile:
    """An Ollama Modelfile. ``render()`` writes it; ``parse(text)`` reads it back to an equal object."""

    from_: str  # FROM: a GGUF path, a model directory, or an Ollama model name
    template: str | None = None  # TEMPLATE: Go text/template (the chat format's ollama_template)
    system: str | None = None  # SYSTEM: default system prompt
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)  # PARAMETER lines; "stop" is a list
    messages: list[Message] = dataclasses.field(default_factory=list)  # MESSAGE history prepended to chats
    license: list[str] = dataclasses.field(default_factory=list)  # LICENSE (one entry per LICENSE command)
    adapter: str | None = None  # ADAPTER: a GGUF LoRA adapter applied on FROM
    extra: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # REQUIRES/RENDERER/PARSER/DRAFT
    comments: list[str] = dataclasses.field(default_factory=list, compare=False)  # "# ..." header lines (render)

    def validate(self) -> None:
        if not self.from_ or not self.from_.strip():
            raise ForgeError("Modelfile: FROM is empty", "give the GGUF path or model name")
        for name, value in self.parameters.items():
            self.parameters[name] = coerce_parameter(name, value)
        for m in self.messages:
            if m.role not in MESSAGE_ROLES:
                raise ForgeError(f"Modelfile: MESSAGE role {m.role!r} is not allowed",
                                 "Ollama accepts system, user and assistant")
        for cmd, _ in self.extra:
            if cmd not in PASSTHROUGH:
                raise ForgeError(f"Modelfile: unknown command {cmd!r}", f"use one of {', '.join(PASSTHROUGH)}")

    def render(self) -> str:
        """Modelfile text; every value is checked to parse back exactly (ForgeError otherwise)."""
        self.validate()
        lines = [f"# {c}" if c else "#" for comment in self.comments for c in comment.split("\n")]
        lines.append(f"FROM {quote(self.from_, 'FROM')}")
        if self.adapter is not None:
            lines.append(f"ADAPTER {quote(self.adapter, 'ADAPTER')}")
        if self.template is not None:
            lines.append(f"TEMPLATE {quote(self.template, 'TEMPLATE')}")
        if self.system is not None:
            lines.append(f"SYSTEM {quote(self.system, 'SYSTEM')}")
        for name, value in self.parameters.items():
            for v in (value if isinstance(value, list) else [value]):
                lines.append(f"PARAMETER {name} {quote(format_parameter_value(v), f'PARAMETER {name}')}")
        for text in self.license:
            lines.append(f"LICENSE {quote(text, 'LICENSE')}")
        for m in self.messages:
            lines.append(f"MESSAGE {m.role} {quote(m.content, f'MESSAGE {m.role}')}")
        for cmd, value in self.extra:
            lines.append(f"{cmd.upper()} {quote(value, cmd.upper())}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        from .atomic import write_text

        text = self.render()
        write_text(path, text)
        return Path(path)


def parse(text: str, source: str = "Modelfile") -> Modelfile:
    """Parse Modelfile text as Ollama does; ForgeError names ``source:line`` and what is wrong."""
    try:
        commands = parse_commands(text)
    except _ParseError as e:
        raise ForgeError(f"{source}:{e.line}: {e.message}", "see https://docs.ollama.com/modelfile") from None
    mf = Modelfile(from_="")
    for cmd, args, line in commands:
        where = f"{source}:{line}"
        if cmd == "model":
            mf.from_ = args
        elif cmd == "adapter":
            mf.adapter = args
        elif cmd == "template":
            mf.template = args
        elif cmd == "system":
            mf.system = args
        elif cmd == "license":
            mf.license.append(args)
        elif cmd == "message":
            role, _, content = args.partition(": ")
            mf.messages.append(Message(role, content))
        elif cmd in PASSTHROUGH:
            mf.extra.append((cmd, args))
        elif cmd in DEPRECATED:
            log.warning("%s: parameter %s is deprecated; Ollama ignores it", where, cmd)
        else:
            value = coerce_parameter(cmd, args, where=f"{where}: PARAMETER")
            if PARAMETERS[cmd] == STRINGS:
                mf.parameters.setdefault(cmd, []).extend(value)
            else:
                mf.parameters[cmd] = value
    if not any(cmd == "model" for cmd, _, _ in commands):
        raise ForgeError(f"{source}: no FROM line", "add FROM <gguf path or model name>")
    return mf


def read(path: str | os.PathLike) -> Modelfile:
    p = Path(path)
    try:
        with open(p, encoding="utf-8", newline="") as f:  # keep \r: Ollama's parser sees it
            text = f.read()
    except OSError as e:
        raise ForgeError(f"{p}: cannot read: {e.strerror}", "check the path") from None
    return parse(text, source=str(p))


# ---------------------------------------------------------------------------------------------------------------
# Building the Modelfile for a model
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ModelInfo:
    """What the Modelfile writer needs to know about a model file."""

    chat_template: str | None = None
    eos_token: str | None = None
    context_length: int | None = None
    architecture: str | None = None
    name: str | None = None


def read_gguf_info(path: str | os.PathLike) -> ModelInfo:
    """Chat template, EOS text, context length and architecture from a GGUF's metadata (no tensors loaded)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as e:  # a truncated or foreign file
        raise ForgeError(f"{path}: cannot read GGUF metadata: {e}", "pass a complete .gguf file") from None

    def get(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    arch = get("general.architecture")
    info = ModelInfo(chat_template=get("tokenizer.chat_template"), architecture=arch, name=get("general.name"))
    if arch:
        ctx = get(f"{arch}.context_length")
        info.context_length = int(ctx) if ctx is not None else None
    eos_id = get("tokenizer.ggml.eos_token_id")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if eos_id is not None and tokens is not None and 0 <= int(eos_id) < len(tokens.data):
        info.eos_token = tokens.contents(int(eos_id))
    return info


def read_hf_info(path: str | os.PathLike) -> ModelInfo:
    import json

    from . import formats

    p = Path(path)
    info = ModelInfo(chat_template=formats.chat_template_of(p))
    cfg_path = p / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = cfg.get("text_config", cfg)
        info.context_length = cfg.get("max_position_embeddings")
        info.architecture = cfg.get("model_type")
    tok_cfg = p / "tokenizer_config.json"
    if tok_cfg.is_file():
        eos = json.loads(tok_cfg.read_text(encoding="utf-8")).get("eos_token")
        info.eos_token = eos.get("content") if isinstance(eos, dict) else eos
    return info


# Ollama's own default context (4096 in current releases, 2048 in older ones and its docs) truncates longer chats
# silently from the front; forge always writes num_ctx. 4096 keeps the KV cache of a small model under ~1 GB.
DEFAULT_NUM_CTX = 4096


def for_model(model: str | os.PathLike, *, chat_format: str | None = None, system: str | None = None,
              training_system: str | None = None, train_max_length: int | None = None,
              params: Mapping[str, Any] | None = None, adapter: str | os.PathLike | None = None,
              info: ModelInfo | None = None, modelfile_dir: str | os.PathLike | None = None,
              license: Sequence[str] = (), messages: Iterable[Message] = (),
              sink: Sink | None = None) -> tuple[Modelfile, Any]:
    """The Modelfile for a GGUF (or HF directory): returns ``(Modelfile, formats.Detection)``.

    - TEMPLATE and stop strings come from the chat format detected from the model's own chat template (or
      ``chat_format``); the format is bound to the model's EOS token.
    - SYSTEM: ``system`` if given (a warning when it differs from ``training_system``), else ``training_system``
      (the system prompt training used; "" means none), else the format's default (e.g. Qwen2.5's), else none.
    - PARAMETER num_ctx is at least ``train_max_length``; stop strings are the format's plus any in ``params``.
    - FROM/ADAPTER paths are written relative to ``modelfile_dir`` when the file is inside it.
    """
    from . import formats

    model_path = Path(model)
    # The caller's own values first: a bad --param or SYSTEM fails before any choice is announced.
    user = {k: coerce_parameter(k, v, where="--param") for k, v in (params or {}).items()}
    if system:
        quote(system, "SYSTEM")
    if info is None:
        if model_path.is_file():
            info = read_gguf_info(model_path)
        elif model_path.is_dir():
            info = read_hf_info(model_path)
        else:
            info = ModelInfo()
    det = formats.detect(info.chat_template, override=chat_format, sink=sink)
    if det.format is None:
        raise ForgeError(f"{model}: cannot choose a chat format: {det.reason}",
                         f"formats: {', '.join(formats.names())}")
    fmt = det.format.bind(add_bos=False, eos_token=info.eos_token)
    if det.how == "markers":
        msg = (f"the model's own chat template is not one forge knows; the Modelfile uses forge's {fmt.name} "
               "template, which may differ from it in details (fine for a model forge trained with it)")
        log.warning(msg)
        emit(sink, "log", "modelfile", msg, level="warning")
    if not formats.is_proven(det.format):
        emit(sink, "log", "modelfile", f"chat format {fmt.name} is not proven by the parity test", level="warning")
        log.warning("chat format %s: template pair not proven by the parity test", fmt.name)

    chosen_system = _choose_system(system, training_system, det.format.default_system, sink)

    parameters: dict[str, Any] = {}
    for k, v in det.format.parameters.items():
        parameters[k] = coerce_parameter(k, v, where=f"chat format {fmt.name}")
    stops = list(fmt.stop) + [s for s in user.pop("stop", []) if s not in fmt.stop]
    parameters["stop"] = stops
    parameters["num_ctx"] = _choose_num_ctx(user.pop("num_ctx", None), train_max_length, info.context_length, sink)
    parameters.update(user)

    base = Path(modelfile_dir) if modelfile_dir is not None else None
    mf = Modelfile(
        from_=_path_for(model_path, base) if (model_path.exists()) else str(model),
        adapter=_path_for(Path(adapter), base) if adapter is not None else None,
        template=fmt.ollama_template, system=chosen_system, parameters=parameters,
        messages=list(messages), license=list(license),
        comments=[f"Modelfile written by ollama-forge for {model_path.name}",
                  f"chat format: {fmt.name}{' (' + det.variant + ')' if det.variant else ''}"
                  f" - {'proven' if formats.is_proven(det.format) else 'NOT proven'} template pair; {det.reason}"])
    mf.validate()
    return mf, det


def _choose_system(system: str | None, training_system: str | None, format_default: str | None,
                   sink: Sink | None) -> str | None:
    if system is not None:
        if training_system is not None and system != training_system:
            msg = ("SYSTEM differs from the system prompt used in training "
                   f"({training_system!r}): the model was not trained with this one")
            log.warning(msg)
            emit(sink, "log", "modelfile", msg, level="warning")
        return system or None
    if training_system is not None:
        choice("system", "training system prompt" if training_system else "none",
               "the SYSTEM used in training", sink=sink)
        return training_system or None
    if format_default:
        choice("system", "format default", f"the official template's default system prompt {format_default!r}",
               sink=sink)
        return format_default
    return None


def _choose_num_ctx(requested: int | None, train_max_length: int | None, context_length: int | None,
                    sink: Sink | None) -> int:
    if requested is not None:
        if train_max_length and requested < train_max_length:
            raise ForgeError(f"--param num_ctx={requested} is below the training max length {train_max_length}: "
                             "Ollama would silently cut longer conversations", f"use num_ctx >= {train_max_length}")
        return requested
    default = min(DEFAULT_NUM_CTX, context_length) if context_length else DEFAULT_NUM_CTX
    value = max(default, train_max_length or 0)
    if train_max_length and value == train_max_length and train_max_length > default:
        reason = f"the training max length ({train_max_length})"
    else:
        reason = (f"{default}: Ollama's default context silently truncates"
                  + (f"; model context {context_length}" if context_length else "")
                  + (f"; training max length {train_max_length}" if train_max_length else ""))
    choice("num_ctx", value, reason, sink=sink)
    return value


def _path_for(path: Path, base: Path | None) -> str:
    resolved = path.resolve()
    if base is not None:
        try:
            rel = resolved.relative_to(base.resolve())
            return f"./{rel.as_posix()}"
        except ValueError:
            pass
    return str(resolved)
