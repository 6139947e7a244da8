"""Talking to Ollama: push (upload + create + verify), list, show, delete, copy, rollback, and forge's own records.

Everything goes through the official ``ollama`` Python client except two calls it does not offer: ``HEAD
/api/blobs/:digest`` (the client uploads without asking) and an upload that reports progress; those use httpx, the
client's own transport, on the same base URL. Every failure a user can meet (Ollama down, a refusal, a lost
connection, a timeout) becomes one ``ForgeError`` line; a rerun of the same push finishes the job, because uploads
are content-addressed (a finished blob is skipped, a broken one was never stored) and ``create`` replaces.

Which models forge made. Ollama keeps no free-form metadata we could tag a model with, so forge keeps its own record:
``$FORGE_DATA_DIR`` (default ``$XDG_DATA_HOME/ollama-forge``, else ``~/.local/share/ollama-forge``) holds
``pushed.json``, one entry per push: host, name, the manifest digest Ollama reports in ``/api/tags`` right after
the push, the GGUF digest, the run directory and the lineage. A registered model is forge's when its current
manifest digest is one forge recorded: Ollama changes that digest whenever any layer changes, so a model re-created
by someone else no longer matches, while ``ollama cp`` copies keep it. The lineage is also written to the run
directory (``lineage.json``) so it travels with the artifacts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ForgeError
from .events import Sink, choice, emit

DEFAULT_PORT = 11434
DEFAULT_TIMEOUT = 120.0  # seconds of silence allowed per request; create streams a status line per step
CONNECT_TIMEOUT = 5.0
UPLOAD_CHUNK = 1 << 20
BACKUP_SUFFIX = "-forge-backup"
DEFAULT_TEMPLATE = "{{ .Prompt }}"  # what Ollama shows for a model created without TEMPLATE
STAGE = "push"


# ---------------------------------------------------------------------------------------------------------------
# Host and errors
# ---------------------------------------------------------------------------------------------------------------

def host_setting(host: str | None = None) -> tuple[str, str]:
    """(what the user set, where it came from): the argument, else OLLAMA_HOST, else the default."""
    if host:
        return host, "--host"
    env = os.environ.get("OLLAMA_HOST")
    if env:
        return env, "OLLAMA_HOST"
    return f"127.0.0.1:{DEFAULT_PORT}", "default"


def base_url(host: str | None = None) -> str:
    """The URL the ollama client will use for ``host`` (its documented OLLAMA_HOST rules, reference §5).

    Bare host -> port 11434; ``http://h`` -> 80, ``https://h`` -> 443; ``:5678`` -> 127.0.0.1:5678; a path is
    kept without its trailing slash; IPv6 brackets are kept.
    """
    raw = (host_setting(host)[0] or "").strip()
    from urllib.parse import urlsplit

    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    default_port = {"http": 80, "https": 443}[scheme] if sep else DEFAULT_PORT
    parts = urlsplit(f"{scheme}://{rest}")
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:  # IPv6 literal
        hostname = f"[{hostname}]"
    try:
        port = parts.port or default_port
    except ValueError:
        raise ForgeError(f"Ollama host {raw!r} has an invalid port", "set OLLAMA_HOST to host:port, e.g. "
                         "127.0.0.1:11434") from None
    path = parts.path.rstrip("/")
    return f"{scheme}://{hostname}:{port}{path}"


def _not_running(host: str | None) -> ForgeError:
    value, source = host_setting(host)
    where = f"{base_url(host)} ({'OLLAMA_HOST=' + value if source == 'OLLAMA_HOST' else source + ': ' + value})"
    return ForgeError(f"Ollama is not running at {where}",
                      "start it with `ollama serve` (or open the Ollama app), or set OLLAMA_HOST to where it runs")


@contextlib.contextmanager
def translate_errors(what: str, host: str | None = None, timeout: float | None = None) -> Iterator[None]:
    """Turn the ollama client's and httpx's exceptions into one-line ForgeErrors that say what to do."""
    import httpx
    from ollama import ResponseError

    url = base_url(host)
    try:
        yield
    except ForgeError:
        raise
    except ResponseError as e:
        code = e.status_code
        if code == -1:
            raise ForgeError(f"Ollama at {url} failed during {what}: {e.error}",
                             "see the Ollama server log; rerun the same command to retry") from None
        if code >= 500:
            raise ForgeError(f"Ollama failed {what}: {e.error} (HTTP {code})",
                             "see the Ollama server log; rerun the same command to retry") from None
        hint = {404: "check the name with `forge models` or `ollama list`"}.get(
            code, "check the name, template and parameters")
        raise ForgeError(f"Ollama refused {what}: {e.error} (HTTP {code})", hint) from None
    except httpx.TimeoutException:
        raise ForgeError(f"Ollama at {url} did not answer {what} within {timeout or DEFAULT_TIMEOUT:g} s",
                         "it may be busy (loading or validating a model); rerun the same command, or raise "
                         "--timeout") from None
    except (httpx.ConnectError, ConnectionRefusedError) as e:
        raise _not_running(host) from e
    except ConnectionError as e:
        # The ollama client turns a refused connection into a builtin ConnectionError (non-streaming calls).
        if "Failed to connect to Ollama" in str(e):
            raise _not_running(host) from None
        raise ForgeError(f"connection to Ollama at {url} was lost during {what}",
                         "rerun the same command: finished uploads are kept and skipped") from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.NetworkError) as e:
        raise ForgeError(f"connection to Ollama at {url} was lost during {what} ({type(e).__name__})",
                         "rerun the same command: finished uploads are kept and skipped") from None
    except httpx.HTTPStatusError as e:  # raise_for_status() on a route the ollama client does not wrap
        code = e.response.status_code
        raise ForgeError(f"Ollama at {url} answered HTTP {code} to {what}",
                         "see the Ollama server log; rerun the same command to retry" if code >= 500 else
                         f"is {url} an Ollama server? set --host or OLLAMA_HOST to where Ollama runs") from None
    except ValueError as e:  # JSON that does not parse, or not the shape Ollama's API has (pydantic)
        first = " ".join(str(e).split())[:120]
        raise ForgeError(f"Ollama at {url} sent a response forge cannot read during {what} "
                         f"({type(e).__name__}: {first})",
                         f"is {url} an Ollama server? set --host or OLLAMA_HOST to where Ollama runs") from None


class Ollama:
    """A connection to one Ollama server: the official client plus an httpx client for HEAD and uploads."""

    def __init__(self, host: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        import httpx
        import ollama

        self.host = host
        self.url = base_url(host)
        self.timeout = timeout
        t = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
        self.client = ollama.Client(host=self.url, timeout=t)
        self.http = httpx.Client(base_url=self.url, timeout=t)

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def __enter__(self) -> "Ollama":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def errors(self, what: str):
        return translate_errors(what, self.host, self.timeout)

    # ---- status ----
    def version(self) -> str:
        """The server's version; raises the 'not running' ForgeError when nothing answers."""
        with self.errors("the version check"):
            r = self.http.get("/api/version")
            r.raise_for_status()
            return str(r.json().get("version", ""))

    def answers(self) -> bool:
        try:
            self.version()
            return True
        except ForgeError:
            return False

    # ---- blobs ----
    def has_blob(self, digest: str) -> bool:
        with self.errors("the blob check"):
            r = self.http.head(f"/api/blobs/{digest}")
        if r.status_code == 200:
            return True
        if r.status_code == 404:
            return False
        raise ForgeError(f"Ollama refused the blob check for {digest} (HTTP {r.status_code})",
                         "is OLLAMA_HOST an Ollama server?")

    def upload_blob(self, path: Path, digest: str, progress: Callable[[int, int], None] | None = None) -> int:
        """POST the file as the blob ``digest``; returns the bytes sent. Ollama verifies the digest (400 if not)."""
        size = path.stat().st_size
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            with open(path, "rb") as f:
                while block := f.read(UPLOAD_CHUNK):
                    sent += len(block)
                    yield block
                    if progress:
                        progress(sent, size)

        with self.errors(f"the upload of {path.name}"):
            r = self.http.post(f"/api/blobs/{digest}", content=body(),
                               headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        if r.status_code not in (200, 201):
            raise ForgeError(f"Ollama refused the upload of {path.name}: {_error_text(r)} (HTTP {r.status_code})",
                             "rerun the same command; if it repeats, the file may be changing while uploaded")
        return sent

    # ---- models ----
    def show(self, name: str) -> Any | None:
        """/api/show for ``name``, or None when Ollama does not have it."""
        from ollama import ResponseError

        with self.errors(f"show {name}"):
            try:
                return self.client.show(name)
            except ResponseError as e:
                if e.status_code == 404:
                    return None
                raise

    def list(self) -> list[Any]:
        with self.errors("the model list"):
            return list(self.client.list().models)

    def digest_of(self, name: str) -> str | None:
        """The manifest digest /api/tags reports for ``name`` (full or shortest form), or None."""
        want = _display(name)
        for m in self.list():
            if _display(m.model or "") == want:
                return m.digest
        return None

    def copy(self, source: str, destination: str) -> None:
        with self.errors(f"copy {source} to {destination}"):
            self.client.copy(source, destination)

    def delete(self, name: str) -> None:
        with self.errors(f"delete {name}"):
            self.client.delete(name)

    def create(self, name: str, **fields: Any) -> Iterator[Any]:
        """Stream /api/create progress responses (a status line per step, ending with "success")."""
        with self.errors(f"create {name}"):
            yield from self.client.create(model=name, stream=True, **fields)


def _error_text(r: Any) -> str:
    try:
        return str(r.json().get("error") or r.text)
    except (ValueError, AttributeError):
        return r.text or "(empty response)"


def _display(name: str) -> str:
    """Ollama's shortest display form, for comparing names case-insensitively."""
    from . import ollama_names

    return ollama_names.shortest(name).lower() if ollama_names.is_valid(name) else name.lower()


# ---------------------------------------------------------------------------------------------------------------
# What gets pushed
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PushSpec:
    """One registration: the GGUF plus the Modelfile's parts, as ``/api/create`` takes them."""

    gguf: Path
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    messages: list[dict[str, str]] = dataclasses.field(default_factory=list)
    license: list[str] = dataclasses.field(default_factory=list)
    modelfile: Path | None = None  # the Modelfile these parts came from (or were written to)
    run_dir: Path | None = None
    adapter: Path | None = None  # ADAPTER: a GGUF LoRA adapter uploaded and applied on top


def sha256_digest(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    """``sha256:<hex>`` of a file, as Ollama names blobs."""
    h = hashlib.sha256()
    size = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while block := f.read(UPLOAD_CHUNK * 4):
            h.update(block)
            done += len(block)
            if progress:
                progress(done, size)
    return f"sha256:{h.hexdigest()}"


def gguf_quant_level(path: Path) -> str:
    """How Ollama reports the GGUF's quantization level: the general.file_type name (MOSTLY_Q4_K_M -> Q4_K_M);
    0 (all F32) and absent read "unknown", as in Ollama."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(str(path), "r").fields.get("general.file_type")
    ft = int(field.contents()) if field is not None else 0
    try:
        return LlamaFileType(ft).name.removeprefix("MOSTLY_") if ft > 0 else "unknown"
    except ValueError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------
# forge's record of pushed models
# ---------------------------------------------------------------------------------------------------------------

def data_dir() -> Path:
    if os.environ.get("FORGE_DATA_DIR"):
        return Path(os.environ["FORGE_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ollama-forge"


def registry_path() -> Path:
    return data_dir() / "pushed.json"


def load_registry() -> list[dict[str, Any]]:
    try:
        data = json.loads(registry_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as e:
        raise ForgeError(f"{registry_path()}: unreadable record of pushed models ({e})",
                         "delete or fix the file; forge only uses it to recognise its own models") from None
    return list(data.get("pushed", []))


def _save_registry(entries: list[dict[str, Any]]) -> None:
    from .atomic import write_text

    write_text(registry_path(), json.dumps({"pushed": entries}, indent=2, sort_keys=True) + "\n")


def record_push(url: str, name: str, manifest_digest: str, entry: dict[str, Any]) -> None:
    entries = [e for e in load_registry()
               if not (e.get("host") == url and _display(e.get("name", "")) == _display(name))]
    entries.append({**entry, "host": url, "name": name, "manifest_digest": manifest_digest,
                    "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    _save_registry(entries)


def forge_record(url: str, manifest_digest: str | None) -> dict[str, Any] | None:
    """forge's record for a model with this manifest digest on this host (any name: copies keep the digest)."""
    if not manifest_digest:
        return None
    for e in reversed(load_registry()):
        if e.get("host") == url and e.get("manifest_digest") == manifest_digest:
            return e
    return None


# ---------------------------------------------------------------------------------------------------------------
# Building the push: run directory, or GGUF + Modelfile
# ---------------------------------------------------------------------------------------------------------------

def _check_gguf(path: Path, what: str) -> Path:
    from .modelref import is_gguf_file

    if not path.is_file():
        raise ForgeError(f"{what} {path}: no such file", "check the path (a run directory holds model-*.gguf)")
    if not is_gguf_file(path):
        raise ForgeError(f"{what} {path}: not a GGUF file (no GGUF magic bytes)", "pass the .gguf model file")
    return path


def _from_path(mf: Any, base: Path) -> Path | None:
    """The local file a Modelfile's FROM names (relative to the Modelfile's folder, ~ expanded), if it exists."""
    if not mf.from_:
        return None
    p = Path(mf.from_).expanduser()
    p = p if p.is_absolute() else base / p
    return p if p.exists() else None


def _run_gguf(run: Path) -> Path | None:
    """The GGUF a run serves: the quantized one when there is one (Q4_K_M first), else the f16/bf16/f32 one."""
    ggufs = [p for p in run.glob("model-*.gguf") if p.is_file()]
    rank = {"q4_k_m": 0, "q4_k_s": 1, "q5_k_m": 2, "q6_k": 3, "q8_0": 4, "f16": 8, "bf16": 9, "f32": 10}
    ggufs.sort(key=lambda p: (rank.get(p.stem[len("model-"):], 5), p.name))
    return ggufs[0] if ggufs else None


def _recipe(run: Path) -> dict[str, Any]:
    import yaml

    rec = run / "recipe.resolved.yaml"
    if not rec.is_file():
        return {}
    return yaml.safe_load(rec.read_text(encoding="utf-8")) or {}


def _adapter_meta(run: Path) -> dict[str, Any]:
    for p in (run / "adapter" / "forge_adapter.json", run / "adapter-sft" / "forge_adapter.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return {}
    return {}


def spec_from(run_dir: str | os.PathLike | None = None, gguf: str | os.PathLike | None = None,
              modelfile: str | os.PathLike | None = None, *, chat_format: str | None = None,
              system: str | None = None, sink: Sink | None = None) -> PushSpec:
    """What to push: a run directory (its Modelfile, written now if missing) or a GGUF with a Modelfile.

    Every source also leaves a Modelfile a person can use by hand (``ollama create NAME -f PATH``): the run's
    ``Modelfile``, the given one when its FROM is this GGUF, else ``<gguf stem>.Modelfile`` beside the GGUF.
    """
    from . import modelfile as mfmod

    if run_dir is not None:
        run = Path(run_dir)
        if not run.is_dir():
            raise ForgeError(f"{run}: not a directory", "pass a run directory, or --gguf FILE [--modelfile FILE]")
        path = run / "Modelfile"
        if path.is_file() and modelfile is None:
            mf = mfmod.read(path)
            g = Path(gguf) if gguf else _from_path(mf, run)
            if g is None:
                raise ForgeError(f"{path}: FROM {mf.from_} is not a file here",
                                 "rerun the export stage, or pass --gguf FILE")
            spec = _spec(mf, _check_gguf(g, "GGUF"), path)
            spec.run_dir = run
            return spec
        g = Path(gguf) if gguf else _run_gguf(run)
        if g is None:
            raise ForgeError(f"{run}: no model-*.gguf in this run directory",
                             "export the model first (forge run, or forge convert + forge quantize)")
        _check_gguf(g, "GGUF")
        if modelfile is not None:
            mf = mfmod.read(modelfile)
        else:
            recipe = _recipe(run)
            meta = _adapter_meta(run)
            fmt = chat_format or (recipe.get("chat_format") if recipe.get("chat_format") not in (None, "auto")
                                  else None)
            ollama_cfg = recipe.get("ollama") or {}
            training_system = meta.get("system_prompt") if "system_prompt" in meta else recipe.get("system_prompt")
            mf, _ = mfmod.for_model(g, chat_format=fmt, system=system if system is not None else
                                    ollama_cfg.get("system"), training_system=training_system,
                                    train_max_length=(recipe.get("train") or {}).get("max_length"),
                                    params=ollama_cfg.get("parameters") or None, modelfile_dir=run, sink=sink)
            mf.write(path)
            emit(sink, "log", STAGE, f"wrote {path} (ollama create NAME -f {path} works by hand)")
        spec = _spec(mf, g, path)
        spec.run_dir = run
        return spec

    if gguf is None and modelfile is None:
        raise ForgeError("nothing to push", "give a run directory, or --gguf FILE [--modelfile FILE]")
    if modelfile is not None:
        mpath = Path(modelfile)
        mf = mfmod.read(mpath)
        from_file = _from_path(mf, mpath.parent)
        g = Path(gguf) if gguf else from_file
        if g is None:
            raise ForgeError(f"{mpath}: FROM {mf.from_} is not a local file", "pass --gguf FILE")
        _check_gguf(g, "GGUF")
        if from_file is not None and from_file.resolve() == g.resolve():
            return _spec(mf, g, mpath)
        mf.from_ = f"./{g.name}"
    else:
        g = _check_gguf(Path(gguf), "GGUF")  # type: ignore[arg-type]
        mf, _ = mfmod.for_model(g, chat_format=chat_format, system=system, modelfile_dir=g.parent, sink=sink)
    out = g.parent / f"{g.stem}.Modelfile"
    mf.from_ = f"./{g.name}"
    mf.write(out)
    emit(sink, "log", STAGE, f"wrote {out} (ollama create NAME -f {out} works by hand)")
    return _spec(mf, g, out)


def _spec(mf: Any, gguf: Path, path: Path) -> PushSpec:
    return PushSpec(gguf=gguf, template=mf.template, system=mf.system, parameters=dict(mf.parameters),
                    messages=[{"role": m.role, "content": m.content} for m in mf.messages],
                    license=list(mf.license), modelfile=path,
                    adapter=_from_adapter(mf, path.parent))


def _from_adapter(mf: Any, base: Path) -> Path | None:
    if not mf.adapter:
        return None
    p = Path(mf.adapter).expanduser()
    p = p if p.is_absolute() else base / p
    return _check_gguf(p, "ADAPTER")


# ---------------------------------------------------------------------------------------------------------------
# push / rollback / models
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PushResult:
    name: str  # shortest form, as `ollama list` shows it
    host: str
    gguf_digest: str
    manifest_digest: str
    uploaded_bytes: int
    created: bool  # False when Ollama already had exactly this model
    backup: str | None  # where the replaced model was copied first
    quant_type: str
    modelfile: Path | None
    lineage: dict[str, Any]


def backup_name(name: str) -> str:
    """``m:tag`` -> ``m:tag-forge-backup`` (one level: the next replacement overwrites it); tags stay <= 80."""
    from . import ollama_names

    n = ollama_names.parse(name)
    tag = n.tag[: 80 - len(BACKUP_SUFFIX)] + BACKUP_SUFFIX
    return dataclasses.replace(n, tag=tag).shortest


def _show_modelfile(show: Any) -> Any | None:
    """Ollama's ``modelfile`` text from /api/show, parsed (None if it does not parse: treat as different)."""
    from . import modelfile as mfmod

    try:
        return mfmod.parse(show.modelfile or "", source="ollama show")
    except ForgeError:
        return None


def _blob_digest(path_text: str | None) -> str | None:
    import re

    m = re.search(r"sha256[-:]([0-9a-f]{64})", path_text or "")
    return f"sha256:{m.group(1)}" if m else None


def _same_model(show: Any, spec: PushSpec, digest: str, adapter_digest: str | None) -> bool:
    """True when the registered model is exactly what this push would create (same GGUF and Modelfile parts)."""
    mf = _show_modelfile(show)
    if mf is None:
        return False
    return (_blob_digest(mf.from_) == digest and _blob_digest(mf.adapter) == adapter_digest
            and (show.template or "") == (DEFAULT_TEMPLATE if spec.template is None else spec.template)
            and (mf.system or None) == (spec.system or None)
            and mf.parameters == spec.parameters and mf.license == spec.license
            and [{"role": m.role, "content": m.content} for m in mf.messages] == spec.messages)


def _verify(show: Any, spec: PushSpec, quant: str, name: str) -> None:
    """After create: /api/show must report the template, stops and quantization level this push sent."""
    if show is None:
        raise ForgeError(f"Ollama reported success but has no model {name}", "rerun the same command")
    problems = []
    if spec.template is not None and (show.template or "") != spec.template:
        problems.append("TEMPLATE differs from the one sent")
    mf = _show_modelfile(show)
    sent_stops = list(spec.parameters.get("stop") or [])
    got_stops = list((mf.parameters.get("stop") if mf else None) or [])
    if sorted(got_stops) != sorted(sent_stops):
        problems.append(f"stop strings are {got_stops}, sent {sent_stops}")
    level = getattr(show.details, "quantization_level", None) if show.details else None
    if level != quant:
        problems.append(f"quantization level is {level}, the GGUF says {quant}")
    if problems:
        raise ForgeError(f"Ollama registered {name}, but /api/show disagrees: {'; '.join(problems)}",
                         "the server may rewrite models (an old or new Ollama version?); compare `ollama show "
                         f"--modelfile {name}` with the Modelfile")


def _create_fields(spec: PushSpec, digest: str, adapter_digest: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"files": {spec.gguf.name: digest}}
    if adapter_digest and spec.adapter is not None:
        fields["adapters"] = {spec.adapter.name: adapter_digest}
    if spec.template is not None:
        fields["template"] = spec.template
    if spec.system:
        fields["system"] = spec.system
    if spec.parameters:
        fields["parameters"] = dict(spec.parameters)
    if spec.messages:
        fields["messages"] = [dict(m) for m in spec.messages]
    if spec.license:
        fields["license"] = list(spec.license)
    return fields


def _progress(sink: Sink | None, what: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        emit(sink, "progress", STAGE, what, done=done, total=total)

    return report


def _upload(conn: Ollama, path: Path, digest: str, what: str, sink: Sink | None) -> int:
    """Upload ``path`` as blob ``digest`` unless Ollama has it (HEAD first); returns the bytes sent."""
    if conn.has_blob(digest):
        emit(sink, "log", STAGE, f"{what} {path.name}: Ollama already has {digest[:19]}: nothing to upload")
        return 0
    sent = conn.upload_blob(path, digest, _progress(sink, f"uploading {path.name}"))
    emit(sink, "log", STAGE, f"{what} {path.name}: uploaded {sent} bytes as {digest[:19]}")
    return sent


def push(name: str, spec: PushSpec, *, host: str | None = None, force: bool = False,
         timeout: float = DEFAULT_TIMEOUT, sink: Sink | None = None) -> PushResult:
    """Register ``spec`` as ``name``: upload what Ollama lacks, create, verify, record; see the module docstring.

    Nothing is uploaded or created when ``name`` already is this model: /api/show reports the same GGUF blob and
    Modelfile parts, or forge's record says the current manifest came from this exact request (an Ollama that
    rewrites the GGUF while creating stores it under another digest, so the first test alone would miss it).
    """
    from . import ollama_names
    from .runs import hash_config

    short = ollama_names.parse(name).shortest  # invalid names fail here, before any network call
    _check_gguf(spec.gguf, "GGUF")
    quant = gguf_quant_level(spec.gguf)
    with Ollama(host, timeout=timeout) as conn:
        server_version = conn.version()
        emit(sink, "stage", STAGE, f"pushing {spec.gguf} to Ollama {server_version} at {conn.url} as {short}")
        digest = sha256_digest(spec.gguf, _progress(sink, f"hashing {spec.gguf.name}"))
        adapter_digest = sha256_digest(spec.adapter) if spec.adapter is not None else None
        fields = _create_fields(spec, digest, adapter_digest)
        request_hash = hash_config(fields)
        existing = conn.show(short)
        current = conn.digest_of(short) if existing is not None else None
        record = forge_record(conn.url, current)
        sent, backup, created = 0, None, True
        if existing is not None and (_same_model(existing, spec, digest, adapter_digest)
                                     or (record is not None and record.get("request_hash") == request_hash)):
            created = False
            emit(sink, "log", STAGE, f"{short} is already exactly this model: nothing to upload or create")
        else:
            sent = _upload(conn, spec.gguf, digest, "model", sink)
            if spec.adapter is not None and adapter_digest is not None:
                sent += _upload(conn, spec.adapter, adapter_digest, "adapter", sink)
            if existing is not None:
                backup = backup_name(short)
                if record is None and not force:
                    raise ForgeError(f"{short} already exists in Ollama and was not made by forge",
                                     f"pass --force to replace it (it is first copied to {backup}; `forge push "
                                     f"--rollback {short}` restores it), or push under another name")
                conn.copy(short, backup)
                if record is not None and current:
                    record_push(conn.url, backup, current, {k: v for k, v in record.items()
                                                            if k not in ("host", "name", "manifest_digest")})
                why = "made by forge" if record else "not made by forge; --force"
                choice("backup", backup, f"{short} exists ({why}); `forge push --rollback {short}` restores it",
                       sink=sink, stage=STAGE)
            last = None
            for part in conn.create(short, **fields):
                last = part.status
                emit(sink, "log", STAGE, f"ollama: {part.status}", status=part.status,
                     completed=part.completed, total=part.total)
            if last != "success":
                raise ForgeError(f"Ollama's create of {short} ended without success (last status: {last})",
                                 "rerun the same command")
        _verify(conn.show(short), spec, quant, short)
        manifest_digest = conn.digest_of(short) or ""
        lin = lineage(spec, digest, quant, server_version=server_version, name=short, host=conn.url)
        record_push(conn.url, short, manifest_digest, {
            "gguf_digest": digest, "request_hash": request_hash, "run_dir": str(spec.run_dir or ""),
            "modelfile": str(spec.modelfile or ""), "lineage": lin})
        if spec.run_dir is not None:
            from .atomic import write_text

            write_text(spec.run_dir / "lineage.json", json.dumps(lin, indent=2, sort_keys=True) + "\n")
        return PushResult(name=short, host=conn.url, gguf_digest=digest, manifest_digest=manifest_digest,
                          uploaded_bytes=sent, created=created, backup=backup, quant_type=quant,
                          modelfile=spec.modelfile, lineage=lin)


def rollback(name: str, *, host: str | None = None, timeout: float = DEFAULT_TIMEOUT,
             sink: Sink | None = None) -> str:
    """Restore the model ``forge push`` replaced (copy the backup back, then delete the backup)."""
    from . import ollama_names

    short = ollama_names.parse(name).shortest
    backup = backup_name(short)
    with Ollama(host, timeout=timeout) as conn:
        conn.version()
        if conn.show(backup) is None:
            raise ForgeError(f"no backup of {short} to restore ({backup} is not in Ollama at {conn.url})",
                             "forge push makes one only when it replaces an existing model")
        conn.copy(backup, short)
        conn.delete(backup)
        emit(sink, "stage", STAGE, f"restored {short} from {backup}")
    return backup


def forge_models(*, host: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """Models registered in Ollama whose manifest digest forge recorded at push, with their lineage."""
    with Ollama(host, timeout=timeout) as conn:
        models = conn.list()
        url = conn.url
    out = []
    for m in models:
        rec = forge_record(url, m.digest)
        if rec is None:
            continue
        details = m.details
        out.append({"name": m.model, "digest": m.digest, "size": int(m.size or 0),
                    "modified_at": str(m.modified_at or ""),
                    "quantization_level": getattr(details, "quantization_level", None),
                    "parameter_size": getattr(details, "parameter_size", None),
                    "pushed_as": rec.get("name"), "pushed_at": rec.get("pushed_at"), "run_dir": rec.get("run_dir"),
                    "lineage": rec.get("lineage", {})})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------------------------------------------

LINEAGE_PACKAGES = ("ollama-forge", "transformers", "peft", "trl", "llama_cpp_python", "gguf", "torch", "ollama")


def tool_versions() -> dict[str, str | None]:
    """Installed versions (no imports). llama.cpp is the commit llama-cpp-python vendors, named by its version."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in LINEAGE_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _chat_format_of(spec: PushSpec) -> str:
    """Which registry format the TEMPLATE is (bound to the GGUF's EOS), else "custom"."""
    from . import formats
    from .modelfile import read_gguf_info

    if spec.template is None:
        return "none"
    eos = read_gguf_info(spec.gguf).eos_token
    for fmt in formats.all_formats():
        try:
            if fmt.bind(add_bos=False, eos_token=eos).ollama_template == spec.template:
                return fmt.name
        except ForgeError:
            continue
    return "custom"


def lineage(spec: PushSpec, gguf_digest: str, quant: str, *, server_version: str = "", name: str = "",
            host: str = "") -> dict[str, Any]:
    """Where the pushed model came from: base (and revision), data and recipe hashes, chat format, quant type,
    GGUF digest and tool versions. Fields a bare GGUF cannot tell are null."""
    from .runs import hash_config, hash_path, sha256_file

    out: dict[str, Any] = {
        "ollama_name": name, "ollama_host": host, "ollama_version": server_version,
        "gguf": str(spec.gguf), "gguf_digest": gguf_digest, "quant_type": quant,
        "chat_format": _chat_format_of(spec), "base_model": None, "base_revision": None,
        "data_hash": None, "recipe_hash": None, "versions": tool_versions(),
    }
    run = spec.run_dir
    if run is None:
        return out
    recipe = _recipe(run)
    if recipe:
        out["recipe_hash"] = sha256_file(run / "recipe.resolved.yaml")
        out["base_model"] = recipe.get("base_model") or None
        out["base_revision"] = recipe.get("revision")
        data = recipe.get("data") or {}
        paths = list(data.get("train") or []) + list(data.get("eval") or [])
        recorded = {}
        for stage in (json.loads((run / "manifest.json").read_text()).get("stages", {}).values()
                      if (run / "manifest.json").is_file() else []):
            recorded.update(stage.get("inputs") or {})
        hashes = {p: recorded.get(p) or (hash_path(p) if Path(p).exists() else None) for p in paths}
        out["data_hash"] = hash_config(hashes) if paths else None
    return out
