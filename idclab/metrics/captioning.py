"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, computed by pycocoevalcap.

Image difference captioning papers (CLIP4IDC, RCC, DUDA, ...) report the numbers of the COCO caption evaluation
code. This module is a thin, careful wrapper around that code (``pycocoevalcap`` 1.2, the PyPI copy of
``salaniz/pycocoevalcap``), so idclab's numbers are the papers' numbers:

1. PTB tokenization (Stanford CoreNLP's ``PTBTokenizer``, lower-cased, punctuation dropped), run by Java, after
   line breaks inside a caption ("\\r", U+2028, ...) are replaced by spaces so that captions and ids stay aligned;
2. BLEU-1..4 (corpus level, "closest" reference length for the brevity penalty);
3. METEOR 1.5 (a Java process, started once and reused; see below);
4. ROUGE-L (longest common subsequence, beta = 1.2);
5. CIDEr -- pycocoevalcap's ``Cider`` class is **CIDEr-D** (clipped n-gram counts, Gaussian length penalty), the
   number every coco-caption fork labels "CIDEr". Its idf is computed from the references of the *evaluated set*,
   so a score depends on which captions are scored together (see :func:`score_captions_by_group`).

SPICE is opt-in (``spice=True``): its first use downloads Stanford CoreNLP 3.6.0 (it cannot run offline), it asks
for an 8 GB Java heap, and CLIP4IDC does not report it.

Values are returned as pycocoevalcap returns them: BLEU, METEOR, ROUGE-L (and SPICE) as fractions in [0, 1], CIDEr
on its own scale (about 0-10, papers multiply everything by 100).

Java. Tokenization and METEOR need ``java`` on ``PATH``; without it :class:`JavaNotFoundError` says how to install
it. METEOR's JVM takes about 10 s to start (it loads a 62 MB paraphrase table), so one METEOR process is created
lazily per Python process and reused by every call; it is closed at interpreter exit. A METEOR process talks over
pipes and must not be shared across forked workers (DataLoader workers, ``multiprocessing``): a forked child that
scores captions gets a METEOR process of its own, and never closes its parent's.

Example::

    gts = {"pair0": ["the red cube moved left", "a red cube was moved"]}   # id -> list of references
    res = {"pair0": "the red cube moved to the left"}                      # id -> caption (or [caption])
    score_captions(gts, res)  # {"BLEU-1": ..., ..., "CIDEr": ...}  (CIDEr is 0 for a single item; warns)
"""

from __future__ import annotations

import atexit
import collections
import errno
import json
import os
import shutil
import subprocess
import threading
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _ptb
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

__all__ = [
    "METRIC_NAMES",
    "JavaNotFoundError",
    "score_captions",
    "score_captions_by_group",
    "load_caption_json",
]

# The keys of score_captions' result, in order ("SPICE" is appended when spice=True).
METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

_MAX_LISTED = 10  # how many offending ids an error message lists
_TOKENIZER_LOCK = threading.Lock()

# The JSON layouts load_caption_json accepts, quoted in its error messages.
_FORMATS = {
    "gts": '{"id": ["reference", ...]} or COCO {"annotations": [{"image_id": ..., "caption": "..."}, ...]}',
    "res": '{"id": "caption"} (or {"id": ["caption"]}) or COCO results [{"image_id": ..., "caption": "..."}, ...]',
}

_JAVA_INSTALL_HINT = (
    "Install a Java runtime (8 or newer) and make sure `java` is on PATH:\n"
    "  Debian/Ubuntu/Colab:  apt-get install -y default-jre-headless   (with sudo if needed; in Colab: !apt-get ...)\n"
    "  conda:                conda install -c conda-forge openjdk\n"
    "  macOS (Homebrew):     brew install openjdk   (then follow brew's note to put it on PATH)"
)

_SPICE_HELP = (
    "SPICE could not be set up: it needs a one-time download of Stanford CoreNLP 3.6.0 "
    "(stanford-corenlp-full-2015-12-09.zip, several hundred MB, from nlp.stanford.edu) into pycocoevalcap's "
    "spice/lib folder, which requires network access, and it runs Java with an 8 GB heap. "
    "Run once with network access (score_captions(..., spice=True)) to fetch it, or leave spice=False: "
    "the default metric set (BLEU-1..4, METEOR, ROUGE-L, CIDEr) excludes SPICE, as CLIP4IDC does."
)


class JavaNotFoundError(RuntimeError):
    """Raised when ``java`` is not on PATH; PTB tokenization and METEOR (and SPICE) need it."""


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def score_captions(
    gts: Mapping[Hashable, Sequence[str]],
    res: Mapping[Hashable, str | Sequence[str]],
    *,
    spice: bool = False,
    allow_empty: bool = False,
) -> dict[str, float]:
    """Score generated captions against references with the COCO caption metrics.

    Equal (to float precision) to running pycocoevalcap directly: ``PTBTokenizer`` on both sides, then ``Bleu(4)``,
    ``Meteor``, ``Rouge``, ``Cider`` (and ``Spice``) on the tokenized captions.

    Args:
        gts: id -> list of reference captions (at least one non-empty string per id).
        res: id -> generated caption, as a string or a one-element list. Must have exactly the ids of ``gts``.
            Ids can be any hashable (``str``, ``int``, ...) but must be equal on both sides: ``0`` and ``"0"`` differ.
        spice: also compute SPICE (downloads Stanford CoreNLP on first use; see the module docstring).
        allow_empty: score empty hypotheses as empty captions (they score 0) instead of raising.

    Returns:
        ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` (+ ``"SPICE"``) -> float.
        BLEU/METEOR/ROUGE-L/SPICE are fractions in [0, 1]; CIDEr(-D) is on its 0-10 scale.

    Raises:
        ValueError: malformed inputs (the message says how to fix them).
        JavaNotFoundError: ``java`` is not on PATH.
        RuntimeError: Java or METEOR failed, SPICE cannot run, or pycocoevalcap's package folder is read-only.
    """
    refs, hyps = _validate(gts, res, allow_empty=allow_empty)  # list[list[str]], list[str]; gts order
    if len(refs) == 1:
        _warn_single_item("the evaluated set")
    _require_java()
    spice_scorer = _make_spice() if spice else None  # fail before spending time on tokenization
    gts_tok, res_tok = _tokenize(refs, hyps)  # {int: [str, ...]}, {int: [str]}
    return _score_tokenized(gts_tok, res_tok, spice_scorer)


def score_captions_by_group(
    gts: Mapping[Hashable, Sequence[str]],
    res: Mapping[Hashable, str | Sequence[str]],
    groups: Mapping[Hashable, str],
    *,
    spice: bool = False,
    allow_empty: bool = False,
) -> dict[str, dict[str, float]]:
    """Score captions overall and per group (e.g. per change type), re-running the whole evaluation per group.

    Why re-run instead of averaging per-item scores: CIDEr-D weights n-grams by an idf computed from the references
    of the set being evaluated, so the same caption gets a different CIDEr in a different set. RCC's per-change-type
    tables (``score_generation_by_type``) and the IDC papers that copy them evaluate each subset as its own corpus;
    averaging the per-item CIDEr of a full-set run over a group gives other numbers. BLEU is corpus-level too
    (n-gram counts and the brevity penalty are pooled over the set), so it also differs from an average of
    per-item BLEU. ``result[g]`` equals ``score_captions`` on group ``g``'s ids alone.

    A group with a single item gets CIDEr 0 by construction (every idf is log(1/1) = 0); this warns.

    Args:
        gts, res: as for :func:`score_captions`.
        groups: id -> group name, for every id of ``gts`` (and no others). The name "overall" is reserved.
        spice, allow_empty: as for :func:`score_captions`.

    Returns:
        ``{"overall": scores, "<group>": scores, ...}`` with groups in sorted order; each ``scores`` is a dict as
        returned by :func:`score_captions`.
    """
    refs, hyps = _validate(gts, res, allow_empty=allow_empty)
    ids = list(gts)  # position k in refs/hyps <-> ids[k]
    group_of = _validate_groups(ids, groups)  # list[str], aligned with ids
    if len(ids) == 1:
        _warn_single_item("the evaluated set")
    _require_java()
    spice_scorer = _make_spice() if spice else None
    # Tokenize once: PTB tokenization works line by line, so a subset's tokens equal the tokens of the subset alone.
    gts_tok, res_tok = _tokenize(refs, hyps)

    out = {"overall": _score_tokenized(gts_tok, res_tok, spice_scorer)}
    for name in sorted(set(group_of)):
        members = [k for k, g in enumerate(group_of) if g == name]
        if len(members) == 1:
            _warn_single_item(f"group {name!r}")
        out[name] = _score_tokenized(
            {k: gts_tok[k] for k in members}, {k: res_tok[k] for k in members}, spice_scorer
        )
    return out


def load_caption_json(path: str | os.PathLike, *, kind: Literal["gts", "res"]) -> dict[str, list[str]] | dict[str, str]:
    """Read references (``kind="gts"``) or generated captions (``kind="res"``) from a JSON file.

    Accepted formats:

    * gts, plain: ``{"id": ["reference", ...], ...}``
    * gts, COCO:  ``{"annotations": [{"image_id": id, "caption": "..."}, ...], ...}`` (references grouped by id)
    * res, plain: ``{"id": "caption", ...}`` or ``{"id": ["caption"], ...}``
    * res, COCO results: ``[{"image_id": id, "caption": "..."}, ...]`` (one entry per id)

    Ids are returned as strings in every format (JSON object keys are always strings, COCO ``image_id`` s are often
    ints), so a plain file and a COCO file load with matching ids.

    Returns:
        gts: ``{str id: [reference, ...]}``; res: ``{str id: caption}``.
    """
    if kind not in ("gts", "res"):
        raise ValueError(f"kind must be 'gts' or 'res', got {kind!r}")
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); expected {_FORMATS[kind]}") from None

    if kind == "gts":
        if isinstance(data, dict) and "annotations" in data:  # COCO annotation file
            entries = _coco_entries(data["annotations"], path, kind)
            out: dict[str, list[str]] = {}
            for image_id, caption in entries:
                out.setdefault(image_id, []).append(caption)
            return out
        if isinstance(data, dict):  # plain
            for key, refs in data.items():
                if not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
                    raise ValueError(
                        f"{path}: value of id {key!r} is {_short(refs)}, not a list of strings; expected "
                        f"{_FORMATS['gts']}"
                    )
            return {str(k): list(v) for k, v in data.items()}
        raise ValueError(f"{path}: top level is a {type(data).__name__}; expected {_FORMATS['gts']}")

    # kind == "res"
    if isinstance(data, list):  # COCO results file
        out_res: dict[str, str] = {}
        for image_id, caption in _coco_entries(data, path, kind):
            if image_id in out_res:
                raise ValueError(
                    f"{path}: image_id {image_id!r} appears more than once; a results file needs exactly one "
                    f"caption per id (keep the first, e.g. the top beam)"
                )
            out_res[image_id] = caption
        return out_res
    if isinstance(data, dict):
        if "annotations" in data:
            raise ValueError(
                f"{path} looks like a COCO ground-truth file (it has 'annotations'); load it with kind='gts', "
                f"or pass a results file: {_FORMATS['res']}"
            )
        out_res = {}
        for key, cap in data.items():
            if isinstance(cap, list) and len(cap) == 1:
                cap = cap[0]
            if not isinstance(cap, str):
                raise ValueError(
                    f"{path}: value of id {key!r} is {_short(cap)}; expected a caption string or a one-element "
                    f"list: {_FORMATS['res']}"
                )
            out_res[str(key)] = cap
        return out_res
    raise ValueError(f"{path}: top level is a {type(data).__name__}; expected {_FORMATS['res']}")


# ----------------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------------


def _validate(gts, res, *, allow_empty: bool) -> tuple[list[list[str]], list[str]]:
    """Check gts/res and return (references, hypotheses) as lists aligned with ``list(gts)``."""
    for name, obj, example in (("gts", gts, '{id: ["reference", ...]}'), ("res", res, '{id: "caption"}')):
        if not isinstance(obj, Mapping):
            raise TypeError(f"{name} must be a dict {example}, got {type(obj).__name__}")
    if not gts and not res:
        raise ValueError("gts and res are both empty: nothing to score; pass at least one id with its captions")
    if not gts:
        raise ValueError("gts is empty: pass the reference captions {id: [reference, ...]} for the ids in res")
    if not res:
        raise ValueError("res is empty: pass the generated captions {id: caption} for the ids in gts")

    only_res = [i for i in res if i not in gts]
    only_gts = [i for i in gts if i not in res]
    if only_res or only_gts:
        parts = []
        if only_res:
            parts.append(f"{len(only_res)} id(s) in res are missing from gts: {_list_ids(only_res)}")
        if only_gts:
            parts.append(f"{len(only_gts)} id(s) in gts are missing from res: {_list_ids(only_gts)}")
        msg = "; ".join(parts) + (
            ". gts and res must have exactly the same ids: score only the ids you have captions for, e.g. "
            "gts = {i: gts[i] for i in res}, or generate the missing captions."
        )
        if {str(i) for i in gts} == {str(i) for i in res}:
            msg += (
                " The ids differ only in type (e.g. 0 vs '0'; JSON object keys are always strings): convert them "
                "the same way on both sides, e.g. {str(k): v for k, v in res.items()}."
            )
        raise ValueError(msg)

    refs: list[list[str]] = []
    hyps: list[str] = []
    empty_hyps = []
    for i in gts:
        r = gts[i]
        if isinstance(r, str) or not isinstance(r, Sequence):
            raise ValueError(
                f"gts[{i!r}] is {_short(r)}; references must be a list of strings, e.g. gts[{i!r}] = [{_short(r)}]"
            )
        if len(r) == 0:
            raise ValueError(
                f"gts[{i!r}] is an empty list: every id needs at least one reference caption; add its references "
                f"or drop id {i!r} from both gts and res"
            )
        for j, c in enumerate(r):
            if not isinstance(c, str):
                raise ValueError(
                    f"gts[{i!r}][{j}] is a {type(c).__name__} ({_short(c)}); captions must be str: convert them "
                    f"(e.g. decode token ids to text) before scoring"
                )
            if not c.strip():
                raise ValueError(
                    f"gts[{i!r}][{j}] is an empty reference string: remove it from gts[{i!r}] (an empty reference "
                    f"would be scored as a real one)"
                )
        h = res[i]
        if not isinstance(h, str):
            if not isinstance(h, Sequence):
                raise ValueError(
                    f"res[{i!r}] is a {type(h).__name__} ({_short(h)}); a hypothesis must be a str or a "
                    f"one-element list of str"
                )
            if len(h) != 1:
                raise ValueError(
                    f"res[{i!r}] is a list of {len(h)} captions; pass exactly one hypothesis per id, as a string or "
                    f"a one-element list (e.g. keep the top beam: res[{i!r}] = res[{i!r}][0])"
                )
            h = h[0]
            if not isinstance(h, str):
                raise ValueError(
                    f"res[{i!r}][0] is a {type(h).__name__} ({_short(h)}); captions must be str: convert them "
                    f"(e.g. decode token ids to text) before scoring"
                )
        if not h.strip():
            empty_hyps.append(i)
        refs.append(list(r))
        hyps.append(h)
    if empty_hyps and not allow_empty:
        raise ValueError(
            f"{len(empty_hyps)} empty hypothesis/hypotheses in res (ids: {_list_ids(empty_hyps)}); fix the "
            f"generator, or pass allow_empty=True to score it as an empty caption, which scores 0"
        )
    return refs, hyps


def _validate_groups(ids: list, groups) -> list[str]:
    if not isinstance(groups, Mapping):
        raise TypeError(f"groups must be a dict {{id: group name}}, got {type(groups).__name__}")
    missing = [i for i in ids if i not in groups]
    id_set = set(ids)
    extra = [i for i in groups if i not in id_set]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of gts have no group: {_list_ids(missing)}")
        if extra:
            parts.append(f"{len(extra)} id(s) in groups are not in gts: {_list_ids(extra)}")
        raise ValueError("; ".join(parts) + ". groups must give a group name for exactly the ids of gts/res.")
    out = []
    for i in ids:
        g = groups[i]
        if not isinstance(g, str):
            raise ValueError(f"groups[{i!r}] is a {type(g).__name__} ({g!r}); group names must be str")
        if g == "overall":
            raise ValueError(
                "'overall' is reserved for the whole set's scores; rename that group (e.g. 'overall_group')"
            )
        out.append(g)
    return out


def _warn_single_item(what: str) -> None:
    warnings.warn(
        f"CIDEr(-D) of {what} is 0 by construction: it has a single item, and CIDEr-D's idf is computed from the "
        f"evaluated set's references, so every n-gram gets idf log(1/1) = 0. Score larger sets.",
        UserWarning,
        stacklevel=3,
    )


def _list_ids(ids: list) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_LISTED])
    return shown + (f", ... ({len(ids) - _MAX_LISTED} more)" if len(ids) > _MAX_LISTED else "")


def _short(obj, n: int = 60) -> str:
    s = repr(obj)
    return s if len(s) <= n else s[: n - 3] + "..."


def _coco_entries(entries, path: Path, kind: str) -> list[tuple[str, str]]:
    where = "'annotations'" if kind == "gts" else "the top-level list"
    if not isinstance(entries, list):
        raise ValueError(f"{path}: {where} is a {type(entries).__name__}, not a list; expected {_FORMATS[kind]}")
    out = []
    for n, e in enumerate(entries):
        if not (isinstance(e, dict) and "image_id" in e and "caption" in e):
            raise ValueError(
                f"{path}: entry {n} of {where} is {_short(e)}; every entry needs 'image_id' and 'caption' keys "
                f"(expected {_FORMATS[kind]})"
            )
        if not isinstance(e["caption"], str):
            raise ValueError(f"{path}: entry {n} has a caption of type {type(e['caption']).__name__}; expected str")
        out.append((str(e["image_id"]), e["caption"]))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Java, tokenization, scoring
# ----------------------------------------------------------------------------------------------------------------

_java_ok: set[str] = set()  # java executables that ran `java -version` successfully


def _require_java() -> str:
    """Return the path of ``java`` on PATH after checking once that it runs; raise a helpful error otherwise."""
    java = shutil.which("java")
    if java is None:
        hint = ""
        home = os.environ.get("JAVA_HOME")
        if home and os.path.exists(os.path.join(home, "bin", "java")):
            hint = f"\nJAVA_HOME={home} has bin/java but it is not on PATH: add {os.path.join(home, 'bin')} to PATH."
        raise JavaNotFoundError(
            "Java was not found on PATH. pycocoevalcap runs `java` for PTB tokenization and METEOR (and SPICE), so "
            "caption metrics cannot be computed without it.\n" + _JAVA_INSTALL_HINT + hint
        )
    if java in _java_ok:
        return java
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=120)
        failure = None if proc.returncode == 0 else f"exit status {proc.returncode}: {proc.stderr.strip()[-500:]}"
    except (OSError, subprocess.SubprocessError) as e:
        failure = f"{type(e).__name__}: {e}"
    if failure is not None:
        raise RuntimeError(
            f"Java at {java} failed to run (`{java} -version` -> {failure}). PTB tokenization and METEOR need a "
            f"working Java; repair or reinstall it, or put a working `java` first on PATH.\n" + _JAVA_INSTALL_HINT
        )
    _java_ok.add(java)
    return java


def _tokenize(refs: list[list[str]], hyps: list[str]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """PTB-tokenize references and hypotheses exactly as pycocoevalcap's pipeline does (two tokenizer runs).

    Keys become positions 0..N-1: pycocoevalcap only needs them hashable, SPICE needs them sortable and
    JSON-serialisable, and positions are all three whatever the caller's ids are.
    """
    gts_in = {k: [{"caption": _one_line(c)} for c in r] for k, r in enumerate(refs)}
    res_in = {k: [{"caption": _one_line(h)}] for k, h in enumerate(hyps)}
    return _run_tokenizer(gts_in), _run_tokenizer(res_in)


def _one_line(caption: str) -> str:
    """Replace every line boundary in ``caption`` by a space.

    pycocoevalcap writes one caption per line and reads the tokenizer's output back line by line, but it only
    replaces "\n": Java's PTBTokenizer also ends a line at "\r", "\x0b", "\x0c", U+2028 and U+2029, so such a
    caption would become two lines and every later caption would be scored against the wrong id. ``str.splitlines``
    knows those boundaries and a few more (U+0085, "\x1c".."\x1e"), which the tokenizer would turn into a space or
    drop as punctuation anyway, so the tokens are those of the caption with a space in place of each break.
    """
    return " ".join(caption.splitlines())


class _QuietSubprocess:
    """Stands in for ``subprocess`` inside pycocoevalcap's tokenizer module: same Popen, but Java's stderr is piped.

    Otherwise every call prints "PTBTokenizer tokenized N tokens at X tokens per second" into notebooks and logs.
    """

    PIPE = subprocess.PIPE

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802 (mirrors subprocess.Popen)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return _TokenizerProcess(*args, **kwargs)


class _TokenizerProcess(subprocess.Popen):
    """``subprocess.Popen`` that keeps the tokenizer's output, so that :func:`_run_tokenizer` can count its lines."""

    last_stdout: bytes | None = None  # set by the latest run (read under _TOKENIZER_LOCK)

    def communicate(self, *args, **kwargs):
        out, err = super().communicate(*args, **kwargs)
        _TokenizerProcess.last_stdout = out
        return out, err


def _run_tokenizer(captions: dict[int, list[dict]]) -> dict[int, list[str]]:
    tokenizer_dir = os.path.dirname(os.path.abspath(_ptb.__file__))  # where pycocoevalcap writes its temp file
    try:
        with _TOKENIZER_LOCK:
            _ptb.subprocess = _QuietSubprocess
            _TokenizerProcess.last_stdout = None
            try:
                out = PTBTokenizer().tokenize(captions)
                stdout = _TokenizerProcess.last_stdout
            finally:
                _ptb.subprocess = subprocess
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RuntimeError(
                f"pycocoevalcap's PTBTokenizer writes a temporary file into its own package folder, {tokenizer_dir}, "
                f"and that folder is read-only ({e}). Install pycocoevalcap into a writable environment (e.g. a "
                f"virtualenv: python -m venv .venv && .venv/bin/pip install idclab) or make that folder writable."
            ) from e
        raise
    # The tokenizer does not check Java's exit status: a failed run returns too few lines, silently misaligned.
    if any(len(out.get(k, ())) != len(v) for k, v in captions.items()):
        n_in = sum(len(v) for v in captions.values())
        n_out = sum(len(v) for v in out.values())
        raise RuntimeError(
            f"PTB tokenization (Java, stanford-corenlp-3.4.1.jar in {tokenizer_dir}) returned {n_out} lines for "
            f"{n_in} captions; Java probably failed (see its error output above). Check that `java -version` works "
            f"and that the jar is present."
        )
    # pycocoevalcap pairs output lines with captions in order and silently ignores extra lines: check one to one.
    n_in = sum(len(v) for v in captions.values())
    if stdout is None:
        raise RuntimeError(
            "Could not check that PTB tokenization kept one line per caption: pycocoevalcap's PTBTokenizer no longer "
            "runs Java through subprocess.Popen. Install pycocoevalcap 1.2 (pip install 'pycocoevalcap==1.2')."
        )
    lines = stdout.decode(errors="replace").split("\n")
    if len(lines) == n_in + 1 and lines[-1] == "":
        lines.pop()  # a final newline ends the last line; it does not start a new one
    if len(lines) != n_in:
        raise RuntimeError(
            f"PTB tokenization returned {len(lines)} lines for {n_in} captions, so captions would be scored against "
            f"the wrong ids. A caption probably contains a line break that Java splits on; replace line breaks in "
            f"the captions by spaces and report this case to idclab."
        )
    return out


def _score_tokenized(gts_tok: dict, res_tok: dict, spice_scorer=None) -> dict[str, float]:
    """Run the scorers on tokenized captions ({key: [ref, ...]}, {key: [hyp]}) -> {metric name: float}."""
    bleu, _ = Bleu(4).compute_score(gts_tok, res_tok, verbose=0)  # list of 4 corpus BLEU-n
    meteor = _meteor_score(gts_tok, res_tok)
    rouge, _ = Rouge().compute_score(gts_tok, res_tok)
    cider, _ = Cider().compute_score(gts_tok, res_tok)  # CIDEr-D, idf from these references
    out = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    out.update({"METEOR": float(meteor), "ROUGE-L": float(rouge), "CIDEr": float(cider)})
    if spice_scorer is not None:
        out["SPICE"] = _spice_score(spice_scorer, gts_tok, res_tok)
    return out


# ---- METEOR: one process per Python process --------------------------------------------------------------------


class _MeteorProcess(Meteor):
    """pycocoevalcap's ``Meteor`` plus lifecycle care (the scoring code is pycocoevalcap's own).

    * remembers the process id that started the JVM: ``close``/``__del__`` in a forked child never kill the
      parent's JVM (``Meteor.__del__`` would);
    * drains the JVM's stderr on a thread (pycocoevalcap never reads it, so a chatty JVM could block), keeping the
      last lines for error messages;
    * ``close`` does not take ``Meteor``'s own lock, which ``compute_score`` leaves held if it raises.
    """

    def __init__(self):
        self.owner_pid = os.getpid()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=30)
        super().__init__()  # starts `java -jar meteor-1.5.jar ... -stdio` in pycocoevalcap's meteor folder
        threading.Thread(target=self._drain_stderr, name="meteor-stderr", daemon=True).start()

    def _drain_stderr(self) -> None:
        for line in iter(self.meteor_p.stderr.readline, b""):
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    def alive(self) -> bool:
        return self.meteor_p.poll() is None

    def close(self) -> None:
        if os.getpid() != getattr(self, "owner_pid", None) or not hasattr(self, "meteor_p"):
            return
        p = self.meteor_p
        if p.poll() is None:
            try:
                p.stdin.close()
            except OSError:
                pass
            p.kill()
        p.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_meteor: _MeteorProcess | None = None
_meteor_lock = threading.Lock()


def _get_meteor() -> _MeteorProcess:
    """The process-wide METEOR scorer, started on first use (call with ``_meteor_lock`` held)."""
    global _meteor
    if _meteor is not None and (_meteor.owner_pid != os.getpid() or not _meteor.alive()):
        _meteor = None  # inherited through fork (not ours to use) or dead: start a fresh one
    if _meteor is None:
        _meteor = _MeteorProcess()
    return _meteor


def _meteor_score(gts_tok: dict, res_tok: dict) -> float:
    global _meteor
    with _meteor_lock:
        scorer = _get_meteor()
        try:
            score, _ = scorer.compute_score(gts_tok, res_tok)
        except (ValueError, OSError) as e:  # empty read (JVM died) or broken pipe
            tail = "\n".join(scorer.stderr_tail) or "(no output)"
            scorer.close()
            if _meteor is scorer:
                _meteor = None
            raise RuntimeError(
                "METEOR's Java process failed (it needs about 2 GB of memory: it runs with -Xmx2G). "
                f"Its last error output:\n{tail}"
            ) from e
    return score


def _close_meteor() -> None:
    global _meteor
    with _meteor_lock:
        if _meteor is not None:
            _meteor.close()
            _meteor = None


def _after_fork_in_child() -> None:
    # A forked child inherits the lock in whatever state the parent's threads left it; give the child a fresh one.
    global _meteor_lock
    _meteor_lock = threading.Lock()


atexit.register(_close_meteor)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- SPICE (opt-in) --------------------------------------------------------------------------------------------


def _make_spice():
    from pycocoevalcap.spice.spice import Spice

    try:
        return Spice()  # downloads Stanford CoreNLP 3.6.0 unless spice/lib already has it
    except Exception as e:  # URLError / OSError offline, BadZipFile on a truncated download, ...
        raise RuntimeError(_SPICE_HELP + f"\n(underlying error: {type(e).__name__}: {e})") from e


def _spice_score(spice_scorer, gts_tok: dict, res_tok: dict) -> float:
    try:
        score, _ = spice_scorer.compute_score(gts_tok, res_tok)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(
            "SPICE's Java process failed. Known causes: too little memory (it asks for -Xmx8G); on Java 9+ its "
            "fst/LMDB cache can fail with InaccessibleObjectException (tylin/coco-caption#59) or lmdbjni load errors "
            "(salaniz/pycocoevalcap#25). The default metric set excludes SPICE, as CLIP4IDC does."
        ) from e
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RuntimeError(
                f"SPICE writes tmp/ and cache/ folders into pycocoevalcap's package folder, which is read-only ({e}); "
                f"install pycocoevalcap into a writable environment."
            ) from e
        raise
    return float(score)
