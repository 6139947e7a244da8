"""The arena's record: votes on two models' answers to the same prompt, turned into DPO pairs.

Library entry points (no UI here; the TUI's arena screen is a thin layer over them):

- ``record_vote(run_dir, vote)``: appends the vote to ``votes.jsonl`` and, for an A/B vote, the preference pair
  (``prompt``, ``chosen``, ``rejected``: the plain shape ``data.load_data(..., fmt="preference")`` reads) to
  ``arena-dpo.jsonl``. A tie is recorded, never turned into a pair; so is a vote on two identical answers or an
  empty one (a pair that teaches nothing, which the DPO loader would refuse), and a pair already in the file.
- ``pair_from_vote(vote)``: the one rule from a vote to a pair (or the reason there is none).
- ``read_votes`` / ``read_pairs``: the records, tolerating a truncated last line (a crash mid-write).
- ``dpo_from_votes(run_dir, ...)``: points the run's recipe ``dpo.data`` at the arena pairs and runs the chain from
  the DPO stage (DPO → merge → convert → quantize → Modelfile → fidelity gate → push, which only pushes after the
  gate passed), refusing when there are fewer than ``min_pairs`` pairs.

Every line is appended with a single ``os.write`` on an ``O_APPEND`` descriptor under an advisory lock, after
cutting off any unterminated last line a crashed writer left; so the files always hold whole JSON lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ForgeError
from .events import Sink, choice, emit, log

STAGE = "arena"
VOTES_FILE = "votes.jsonl"
PAIRS_FILE = "arena-dpo.jsonl"
WINNERS = ("left", "right", "tie")
MIN_PAIRS = 8  # a DPO round on fewer voted pairs moves the model on noise


@dataclasses.dataclass
class Vote:
    """One arena round: the same prompt answered by the model shown on each side, and which side won."""

    prompt: str
    left_model: str
    right_model: str
    left_answer: str
    right_answer: str
    winner: str  # "left" | "right" | "tie": the side (as shown on screen) the user preferred
    blind: bool = False
    seed: int | None = None  # blind mode: the seed of the RNG that shuffles sides (with ``round``, replays it)
    round: int = 0
    swapped: bool = False  # blind mode: the sides were swapped this round (left shows the second model given)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the decoding options both sides used
    time: float = dataclasses.field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise ForgeError(f"arena vote: winner {self.winner!r} is not one of {', '.join(WINNERS)}",
                             "vote left (A), right (B) or tie")

    @property
    def winner_model(self) -> str | None:
        return {"left": self.left_model, "right": self.right_model}.get(self.winner)

    def to_record(self) -> dict[str, Any]:
        return {
            "time": datetime.datetime.fromtimestamp(self.time).astimezone().isoformat(timespec="milliseconds"),
            "round": self.round,
            "prompt": self.prompt,
            "left": {"model": self.left_model, "answer": self.left_answer},
            "right": {"model": self.right_model, "answer": self.right_answer},
            "winner": self.winner,
            "winner_model": self.winner_model,
            "blind": self.blind,
            "seed": self.seed,
            "swapped": self.swapped,
            "options": self.options,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Vote":
        return cls(prompt=rec["prompt"], left_model=rec["left"]["model"], right_model=rec["right"]["model"],
                   left_answer=rec["left"]["answer"], right_answer=rec["right"]["answer"], winner=rec["winner"],
                   blind=bool(rec.get("blind")), seed=rec.get("seed"), round=int(rec.get("round") or 0),
                   swapped=bool(rec.get("swapped")), options=dict(rec.get("options") or {}),
                   time=datetime.datetime.fromisoformat(rec["time"]).timestamp() if rec.get("time") else 0.0)


@dataclasses.dataclass
class VoteResult:
    votes_path: Path
    pairs_path: Path
    pair: dict[str, str] | None  # the pair appended to arena-dpo.jsonl, None when the vote made none
    why: str  # what became of the vote, in one line (shown by the UI)
    votes: int  # votes recorded so far
    pairs: int  # pairs in the DPO file so far


def pair_from_vote(vote: Vote) -> tuple[dict[str, str] | None, str]:
    """The preference pair a vote makes, or (None, why it makes none)."""
    if vote.winner == "tie":
        return None, "recorded, never a pair"
    chosen, rejected = ((vote.left_answer, vote.right_answer) if vote.winner == "left"
                        else (vote.right_answer, vote.left_answer))
    if not vote.prompt.strip():
        return None, "empty prompt: recorded, not a pair"
    if not chosen.strip() or not rejected.strip():
        return None, "an answer is empty: recorded, not a pair"
    if chosen == rejected:
        return None, "both answers are identical: recorded, not a pair"
    return {"prompt": vote.prompt, "chosen": chosen, "rejected": rejected}, "pair added"


def is_run_dir(path: Path) -> bool:
    """A forge run directory (as open_backend reads one): a directory that is not an HF model directory."""
    return path.is_dir() and not (path / "config.json").is_file()


def arena_run_dir(left: str, right: str, run_dir: str | os.PathLike | None = None,
                  sink: Sink | None = None) -> tuple[Path, str]:
    """Where the votes go, and why: ``run_dir`` when given; else the run directory among the two models (the right
    one first: base on the left, tuned on the right is the usual order), or the run holding a model's GGUF; else
    ./arena."""
    if run_dir is not None:
        return Path(run_dir), "given with --run"
    found: tuple[Path, str] | None = None
    for ref in (right, left):
        p = Path(ref).expanduser()
        if is_run_dir(p):
            found = p, f"{ref} is a run directory"
        elif p.is_file() and (p.parent / "recipe.resolved.yaml").is_file():
            found = p.parent, f"{ref} lies in a run directory"
        if found:
            break
    if found is None:
        found = Path("arena"), "no --run given and neither model is a run directory"
    choice("arena_run_dir", str(found[0]), found[1], sink, STAGE)
    return found


def votes_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / VOTES_FILE


def pairs_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / PAIRS_FILE


def record_vote(run_dir: str | os.PathLike, vote: Vote, sink: Sink | None = None) -> VoteResult:
    """Append the vote to votes.jsonl and its pair (if it makes one, and the file lacks it) to arena-dpo.jsonl."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    vp, pp = votes_path(run), pairs_path(run)
    pair, why = pair_from_vote(vote)
    pairs = read_pairs(run, sink=sink)
    if pair is not None and pair in pairs:
        pair, why = None, "the same pair is already in the DPO file: vote recorded, no duplicate pair"
    rec = vote.to_record()
    rec["pair"] = pair is not None
    # The vote first: votes.jsonl is the whole record, arena-dpo.jsonl what DPO reads (rebuild_pairs redoes it).
    append_jsonl(vp, rec, sink=sink)
    if pair is not None:
        append_jsonl(pp, pair, sink=sink)
        pairs.append(pair)
    n_votes = len(read_jsonl(vp, sink=sink)[0])
    emit(sink, "log", STAGE, f"vote {vote.winner}: {why}", winner=vote.winner, pair=pair is not None,
         votes=n_votes, pairs=len(pairs))
    return VoteResult(vp, pp, pair, why, n_votes, len(pairs))


def read_votes(run_dir: str | os.PathLike, sink: Sink | None = None) -> list[Vote]:
    return [Vote.from_record(r) for r in read_jsonl(votes_path(run_dir), sink=sink)[0]]


def read_pairs(run_dir: str | os.PathLike, sink: Sink | None = None) -> list[dict[str, str]]:
    return read_jsonl(pairs_path(run_dir), sink=sink)[0]


def pairs_from_votes(votes: list[Vote]) -> list[dict[str, str]]:
    """Every pair the votes make, in order, without duplicates."""
    out: list[dict[str, str]] = []
    for v in votes:
        pair, _ = pair_from_vote(v)
        if pair is not None and pair not in out:
            out.append(pair)
    return out


def rebuild_pairs(run_dir: str | os.PathLike, sink: Sink | None = None) -> int:
    """Rewrite arena-dpo.jsonl from votes.jsonl (atomically); returns the number of pairs."""
    from .atomic import write_text

    pairs = pairs_from_votes(read_votes(run_dir, sink=sink))
    write_text(pairs_path(run_dir), "".join(_line(p).decode("utf-8") for p in pairs))
    return len(pairs)


# ---------------------------------------------------------------------------------------------------------------
# Crash-safe JSON Lines

def _line(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; single-writer use is still safe
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _cut_torn_tail(fd: int, path: Path, sink: Sink | None) -> None:
    """If the file ends in an unterminated line (a writer died mid-write), cut it off: it can never be parsed."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = max(0, size - (1 << 20))
    tail = os.pread(fd, size - start, start)
    keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    if keep == 0 and start > 0:  # a line over 1 MiB: find its start the slow way
        data = os.pread(fd, size, 0)
        keep = data.rfind(b"\n") + 1
    try:
        json.loads(os.pread(fd, size - keep, keep).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    else:  # a whole record that only lacks its newline (a hand edit): keep it
        os.write(fd, b"\n")
        return
    os.ftruncate(fd, keep)
    msg = f"{path}: dropped an unfinished last line ({size - keep} bytes) left by an interrupted write"
    log.warning(msg)
    emit(sink, "log", STAGE, msg, path=str(path), dropped_bytes=size - keep)


def append_jsonl(path: str | os.PathLike, obj: Any, sink: Sink | None = None) -> None:
    """Append one JSON line: one ``os.write`` of the whole line on an O_APPEND descriptor, fsynced, under a lock.

    A torn last line left by an earlier crash is cut off first, so the file never holds a line a reader rejects.
    """
    path = Path(path)
    data = _line(obj)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with _locked(fd):
            _cut_torn_tail(fd, path, sink)
            written = os.write(fd, data)
            while written < len(data):  # regular files take it all at once; this only guards odd filesystems
                written += os.write(fd, data[written:])
            os.fsync(fd)
    finally:
        os.close(fd)


def repair_jsonl(path: str | os.PathLike, sink: Sink | None = None) -> None:
    """Cut off a torn last line, if any (so ``load_data`` reads every line)."""
    path = Path(path)
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        with _locked(fd):
            _cut_torn_tail(fd, path, sink)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike, sink: Sink | None = None) -> tuple[list[Any], int]:
    """(records, torn): every whole JSON line; an unparseable *last* line without its newline (a crash mid-write)
    is skipped and counted. A broken line anywhere else is a user's edit: ForgeError naming file:line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    lines = raw.split(b"\n")
    out: list[Any] = []
    torn = 0
    for i, bline in enumerate(lines, 1):
        if not bline.strip():
            continue
        last_unterminated = i == len(lines)  # text after the final newline
        try:
            out.append(json.loads(bline.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if last_unterminated:
                torn += 1
                emit(sink, "log", STAGE, f"{path}:{i}: unfinished last line (interrupted write) skipped")
                continue
            raise ForgeError(f"{path}:{i}: not a JSON line ({e})", "fix or delete that line") from None
    return out, torn


# ---------------------------------------------------------------------------------------------------------------
# A DPO round from the votes

def count_pairs(run_dir: str | os.PathLike, sink: Sink | None = None) -> int:
    """Valid preference pairs in the run's arena file, as the DPO loader will read them."""
    from .data import load_data

    pp = pairs_path(run_dir)
    repair_jsonl(pp, sink=sink)
    if not pp.is_file() or not pp.read_bytes().strip():
        return 0
    data = load_data(str(pp), fmt="preference")
    if data.problems:
        first = data.problems[0]
        raise ForgeError(f"{first}", f"fix or delete that line of {pp.name}, or rebuild it from {VOTES_FILE}")
    return len(data.records)


def dpo_from_votes(run_dir: str | os.PathLike, *, min_pairs: int = MIN_PAIRS, sink: Sink | None = None,
                   host: str | None = None, push: bool = True, should_stop: Callable[[], bool] | None = None,
                   run_pipeline: Callable[..., Any] | None = None) -> Any:
    """Start a DPO round on the arena's pairs: set the run's recipe ``dpo.data`` to arena-dpo.jsonl and run the
    chain from the DPO stage (the push stage re-registers the model only after the fidelity gate passed).

    Returns whatever ``pipeline.run_pipeline`` returns. Refuses (ForgeError) with fewer than ``min_pairs`` pairs or
    without the run's resolved recipe.
    """
    from . import recipe as recipes

    run = Path(run_dir)
    pp = pairs_path(run)
    n = count_pairs(run, sink=sink)
    if n < min_pairs:
        raise ForgeError(f"{pp}: {n} voted pair{'s' if n != 1 else ''}; a DPO round needs at least {min_pairs}",
                         f"vote A or B on {min_pairs - n} more prompt{'s' if min_pairs - n != 1 else ''} "
                         "(ties and identical answers make no pair)")
    recipe_file = run / "recipe.resolved.yaml"
    if not recipe_file.is_file():
        raise ForgeError(f"{run}: no recipe.resolved.yaml, so there is no run to continue with DPO",
                         "open the arena with --run on a run directory made by forge run / forge train")
    recipe = recipes.load(recipe_file)
    before = list(recipe.dpo.data) if recipe.dpo is not None else []
    if recipe.dpo is None:
        recipe.dpo = recipes.DPOConfig()
    recipe.dpo.data = [str(pp.resolve())]
    choice("dpo.data", pp.name, f"{n} arena pairs (voted A/B; ties are not pairs)"
           + (f"; replaces {', '.join(before)}" if before and before != recipe.dpo.data else ""), sink, STAGE)
    recipes.validate(recipe, str(recipe_file))
    recipes.save_resolved(recipe, run)
    if run_pipeline is None:
        try:
            from .pipeline import run_pipeline
        except ImportError as e:
            raise ForgeError(f"the pipeline is not available in this install ({e})",
                             "update ollama-forge; forge train --dpo then forge export / push do the same by hand") \
                from None
    emit(sink, "stage", STAGE, f"DPO round on {n} arena pairs: dpo → merge → convert → quantize → gate → push",
         pairs=n)
    return run_pipeline(recipe, run, sink, from_stage="dpo", push=push, host=host, should_stop=should_stop)
