"""idclab.metrics.captioning: golden values, parity with a direct pycocoevalcap pipeline, per-group CIDEr-D,
input validation, Java / SPICE / read-only failure messages.

METEOR's JVM takes ~10 s to start, so every test shares the library's process-wide METEOR scorer (the direct
pipeline below uses it too: it is pycocoevalcap's own ``Meteor`` class; only its process is shared). The golden
values were measured with an untouched pycocoevalcap, so they also check that sharing changes nothing.
"""

import errno
import json
import os
import shutil
import stat
import urllib.error

import pycocoevalcap.spice.spice as pce_spice
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from idclab.metrics import JavaNotFoundError, load_caption_json, score_captions, score_captions_by_group
from idclab.metrics import captioning as cap

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java on PATH")

# Made-up captions; the golden values were computed once with pycocoevalcap.
GTS = {
    0: [
        "The small red cube has moved to the left.",
        "the red cube changed its location",
        "A small red cube was moved.",
    ],
    1: ["There is no difference.", "the two scenes seem identical", "Nothing has changed."],
    2: ["The large blue sphere became green.", "the big blue ball changed color to green"],
    3: ["Someone added a tiny yellow cylinder.", "A yellow cylinder appeared behind the gray cube."],
}
RES = {
    0: "The small red cube moved to the left.",
    1: "There is no change.",
    2: "The big blue sphere changed to green.",
    3: "A yellow cylinder has been added.",
}
GOLDEN = {
    "BLEU-1": 0.879999999930,
    "BLEU-2": 0.765941686141,
    "BLEU-3": 0.622797476042,
    "BLEU-4": 0.439068007654,
    "METEOR": 0.385656519155,
    "ROUGE-L": 0.742948617546,
    "CIDEr": 2.545429305075,
}


def _meteor_direct(g, r):
    with cap._meteor_lock:
        return cap._get_meteor().compute_score(g, r)[0]


def direct_pipeline(gts, res):
    """The plain pycocoevalcap recipe (COCOEvalCap.evaluate minus SPICE), written independently of idclab."""
    tokenizer = PTBTokenizer()
    g = tokenizer.tokenize({i: [{"caption": c} for c in gts[i]] for i in gts})
    r = tokenizer.tokenize({i: [{"caption": res[i]}] for i in gts})
    bleu, _ = Bleu(4).compute_score(g, r, verbose=0)
    rouge, _ = Rouge().compute_score(g, r)
    cider, cider_items = Cider().compute_score(g, r)
    out = {"BLEU-1": bleu[0], "BLEU-2": bleu[1], "BLEU-3": bleu[2], "BLEU-4": bleu[3]}
    out.update(METEOR=_meteor_direct(g, r), **{"ROUGE-L": rouge, "CIDEr": cider})
    return out, dict(zip(g, cider_items))


def assert_scores_equal(a, b, tol=1e-9):
    assert list(a) == list(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=tol), key


# ---- golden values and parity -----------------------------------------------------------------------------------


@needs_java
def test_golden_values():
    scores = score_captions(GTS, RES)
    assert list(scores) == list(cap.METRIC_NAMES)
    assert all(type(v) is float for v in scores.values())
    assert_scores_equal(scores, GOLDEN)


@needs_java
def test_equals_direct_pycocoevalcap_pipeline():
    direct, _ = direct_pipeline(GTS, RES)
    assert_scores_equal(score_captions(GTS, RES), direct)
    assert_scores_equal(direct, GOLDEN)


@needs_java
def test_str_ids_and_one_element_lists_give_the_same_scores():
    gts = {f"pair{i}": refs for i, refs in GTS.items()}
    res = {f"pair{i}": [RES[i]] for i in reversed(list(RES))}  # other order, one-element lists
    assert_scores_equal(score_captions(gts, res), GOLDEN)


@needs_java
def test_meteor_process_is_reused():
    score_captions(GTS, RES)
    first = cap._meteor
    pid = first.meteor_p.pid
    score_captions(GTS, RES)
    assert cap._meteor is first and first.meteor_p.pid == pid and first.alive()


@needs_java
def test_allow_empty_scores_an_empty_hypothesis_like_pycocoevalcap():
    res = {**RES, 1: ""}
    with pytest.raises(ValueError, match=r"res.*\(ids: 1\).*allow_empty=True to score it as an empty caption"):
        score_captions(GTS, res)
    direct, _ = direct_pipeline(GTS, res)
    scores = score_captions(GTS, res, allow_empty=True)
    assert_scores_equal(scores, direct)
    assert scores["CIDEr"] < GOLDEN["CIDEr"]


# ---- per-group scoring -------------------------------------------------------------------------------------------


@needs_java
def test_by_group_reruns_the_evaluation_per_group():
    groups = {0: "move", 3: "move", 1: "other", 2: "other"}
    out = score_captions_by_group(GTS, RES, groups)
    assert list(out) == ["overall", "move", "other"]
    assert_scores_equal(out["overall"], GOLDEN)
    for name, ids in (("move", [0, 3]), ("other", [1, 2])):
        alone = score_captions({i: GTS[i] for i in ids}, {i: RES[i] for i in ids})
        assert_scores_equal(out[name], alone)
    # Averaging the per-item CIDEr-D of the full-set run is a different number (the idf changes with the set).
    _, cider_items = direct_pipeline(GTS, RES)
    naive_move = (cider_items[0] + cider_items[3]) / 2
    assert abs(naive_move - out["move"]["CIDEr"]) > 0.1


@needs_java
def test_single_item_group_warns_and_scores_cider_zero():
    groups = {0: "a", 1: "a", 2: "a", 3: "solo"}
    with pytest.warns(UserWarning, match=r"CIDEr.*group 'solo'.*0 by construction"):
        out = score_captions_by_group(GTS, RES, groups)
    assert out["solo"]["CIDEr"] == 0.0
    assert out["solo"]["BLEU-1"] > 0


@pytest.mark.parametrize(
    "groups, match",
    [
        ({0: "a", 1: "a", 2: "b"}, r"1 id\(s\) of gts have no group: 3"),
        ({0: "a", 1: "a", 2: "b", 3: "b", 9: "b"}, r"1 id\(s\) in groups are not in gts: 9"),
        ({0: "a", 1: "a", 2: "b", 3: "overall"}, r"'overall' is reserved"),
        ({0: "a", 1: "a", 2: "b", 3: 7}, r"groups\[3\].*must be str"),
    ],
)
def test_by_group_rejects_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        score_captions_by_group(GTS, RES, groups)


# ---- input validation (no Java needed: checked before anything runs) -------------------------------------------

MANY = {i: ["a reference"] for i in range(15)}


@pytest.mark.parametrize(
    "gts, res, match",
    [
        (GTS, {**RES, 9: "extra"}, r"1 id\(s\) in res are missing from gts: 9.*same ids"),
        (GTS, {i: RES[i] for i in (0, 1)}, r"2 id\(s\) in gts are missing from res: 2, 3"),
        (MANY, {}, r"res is empty"),
        (MANY, {99: "x"}, r"15 id\(s\) in gts are missing from res: 0, 1, .*9, \.\.\. \(5 more\)"),
        ({}, RES, r"gts is empty"),
        ({}, {}, r"nothing to score"),
        ({"0": ["a b"]}, {0: "a b"}, r"differ only in type.*str\(k\)"),
        ({0: ["a b"]}, {0: ["a b", "c d"]}, r"res\[0\] is a list of 2 captions; pass exactly one hypothesis"),
        ({0: ["a b"]}, {0: []}, r"res\[0\] is a list of 0 captions"),
        ({0: ["a b"]}, {0: 5}, r"res\[0\] is a int.*must be a str"),
        ({0: ["a b"]}, {0: [5]}, r"res\[0\]\[0\] is a int.*captions must be str"),
        ({0: ["a b", None]}, {0: "a b"}, r"gts\[0\]\[1\] is a NoneType.*captions must be str"),
        ({0: "a b"}, {0: "a b"}, r"gts\[0\] is 'a b'; references must be a list of strings, e.g. gts\[0\] = \['a b'\]"),
        ({"x": []}, {"x": "a b"}, r"gts\['x'\] is an empty list.*at least one reference"),
        ({"x": ["a b", "  "]}, {"x": "a b"}, r"gts\['x'\]\[1\] is an empty reference string: remove it"),
        ({"x": ["a b"]}, {"x": "  "}, r"\(ids: 'x'\).*pass allow_empty=True to score it as an empty caption, which"),
    ],
)
def test_bad_inputs_raise_with_the_fix(gts, res, match):
    with pytest.raises(ValueError, match=match):
        score_captions(gts, res)


def test_non_mapping_inputs():
    with pytest.raises(TypeError, match="gts must be a dict"):
        score_captions([["a"]], {0: "a"})


# ---- Java, SPICE, read-only installs ---------------------------------------------------------------------------


def test_missing_java_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(JavaNotFoundError, match="Java was not found on PATH") as err:
        score_captions(GTS, RES)
    msg = str(err.value)
    for hint in (
        "apt-get install -y default-jre-headless",
        "conda install -c conda-forge openjdk",
        "brew install openjdk",
        "PTB tokenization and METEOR",
    ):
        assert hint in msg
    assert isinstance(err.value, RuntimeError)


def test_missing_java_points_at_java_home(monkeypatch, tmp_path):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("JAVA_HOME", str(home))
    with pytest.raises(JavaNotFoundError, match=r"JAVA_HOME=.*not on PATH: add .*bin to PATH"):
        score_captions(GTS, RES)


def test_broken_java_is_reported_clearly(monkeypatch, tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'Error: could not open jvm.cfg' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"failed to run.*exit status 1.*jvm\.cfg.*working Java"):
        score_captions(GTS, RES)


@needs_java
def test_spice_offline_raises_a_clear_error(monkeypatch):
    def offline():  # what Spice() hits offline: the CoreNLP download fails (no network is touched here)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(pce_spice, "get_stanford_models", offline)
    with pytest.raises(RuntimeError, match=r"SPICE.*one-time download of Stanford CoreNLP 3\.6\.0") as err:
        score_captions(GTS, RES, spice=True)
    assert "network access" in str(err.value) and "excludes SPICE, as CLIP4IDC does" in str(err.value)


@needs_java
@pytest.mark.parametrize("exc", [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "RO fs")])
def test_read_only_tokenizer_folder(monkeypatch, exc):
    def refuse(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cap._ptb.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(RuntimeError, match=r"PTBTokenizer writes a temporary file.*read-only.*writable"):
        score_captions(GTS, RES)


@needs_java
def test_truncated_tokenizer_output_is_an_error(monkeypatch):
    monkeypatch.setattr(PTBTokenizer, "tokenize", lambda self, caps: {0: ["only one line"]})
    with pytest.raises(RuntimeError, match=r"PTB tokenization .* returned 1 lines for 10 captions"):
        score_captions(GTS, RES)


@needs_java
def test_meteor_failure_is_reported_and_keeps_the_shared_scorer(monkeypatch):
    class DeadMeteor:
        stderr_tail = ["Error: Could not reserve enough space for object heap"]

        def compute_score(self, g, r):
            raise ValueError("could not convert string to float: b''")

        def close(self):
            pass

    shared = cap._meteor
    monkeypatch.setattr(cap, "_get_meteor", lambda: DeadMeteor())
    with pytest.raises(RuntimeError, match=r"(?s)METEOR's Java process failed.*-Xmx2G.*reserve enough space"):
        score_captions(GTS, RES)
    assert cap._meteor is shared


def test_meteor_close_never_kills_a_parents_jvm():
    killed = []

    class FakePopen:
        def poll(self):
            return None

        def kill(self):
            killed.append(True)

    m = cap._MeteorProcess.__new__(cap._MeteorProcess)  # no JVM: just the fork guard
    m.meteor_p = FakePopen()
    m.owner_pid = os.getpid() + 1  # as if inherited through fork
    m.close()
    assert killed == []


# ---- JSON loading ----------------------------------------------------------------------------------------------


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_load_caption_json_formats_agree(tmp_path):
    plain_gts = _write(tmp_path, "gts.json", {str(i): refs for i, refs in GTS.items()})
    coco_gts = _write(
        tmp_path,
        "coco_gts.json",
        {
            "images": [],
            "annotations": [{"image_id": i, "id": n, "caption": c} for i in GTS for n, c in enumerate(GTS[i])],
        },
    )
    plain_res = _write(tmp_path, "res.json", {str(i): c for i, c in RES.items()})
    listed_res = _write(tmp_path, "res_list.json", {str(i): [c] for i, c in RES.items()})
    coco_res = _write(tmp_path, "coco_res.json", [{"image_id": i, "caption": c} for i, c in RES.items()])

    expected_gts = {str(i): refs for i, refs in GTS.items()}
    expected_res = {str(i): c for i, c in RES.items()}
    assert load_caption_json(plain_gts, kind="gts") == expected_gts
    assert load_caption_json(coco_gts, kind="gts") == expected_gts
    for path in (plain_res, listed_res, coco_res):
        assert load_caption_json(path, kind="res") == expected_res


@needs_java
def test_loaded_files_score_the_golden_values(tmp_path):
    coco_gts = _write(
        tmp_path, "g.json", {"annotations": [{"image_id": i, "caption": c} for i in GTS for c in GTS[i]]}
    )
    plain_res = _write(tmp_path, "r.json", {str(i): c for i, c in RES.items()})
    scores = score_captions(load_caption_json(coco_gts, kind="gts"), load_caption_json(plain_res, kind="res"))
    assert_scores_equal(scores, GOLDEN)


@pytest.mark.parametrize(
    "kind, content, match",
    [
        ("gts", "{not json", r"not valid JSON.*expected \{\"id\": \[\"reference\""),
        ("gts", [1, 2], r"top level is a list; expected .*COCO \{\"annotations\""),
        ("gts", {"0": "one reference"}, r"id '0' is 'one reference', not a list of strings"),
        ("gts", {"annotations": {"image_id": 0}}, r"'annotations' is a dict, not a list"),
        ("gts", {"annotations": [{"image_id": 0}]}, r"entry 0 .* needs 'image_id' and 'caption'"),
        ("res", [{"image_id": 0, "caption": "a"}, {"image_id": 0, "caption": "b"}], r"image_id '0' appears more"),
        ("res", {"annotations": []}, r"looks like a COCO ground-truth file.*kind='gts'"),
        ("res", {"0": ["a", "b"]}, r"id '0' is \['a', 'b'\]; expected a caption string or a one-element list"),
        ("res", "3", r"top level is a int; expected .*COCO results"),
    ],
)
def test_load_caption_json_malformed(tmp_path, kind, content, match):
    path = _write(tmp_path, "bad.json", content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_caption_json(path, kind=kind)


def test_load_caption_json_kind(tmp_path):
    with pytest.raises(ValueError, match="kind must be 'gts' or 'res'"):
        load_caption_json(_write(tmp_path, "x.json", {}), kind="refs")


# ---- line breaks inside captions ------------------------------------------------------------------------------

# Characters that end a line for Java's PTBTokenizer or for Python (pycocoevalcap only replaces "\n").
LINE_BREAKS = ["\r", "\r\n", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\n"]


def _with_breaks(text, k):
    """``text`` with its first space replaced by line break number k (cycling through LINE_BREAKS)."""
    return text.replace(" ", LINE_BREAKS[k % len(LINE_BREAKS)], 1)


@needs_java
def test_line_breaks_in_captions_give_the_scores_of_the_clean_text():
    gts = {i: [_with_breaks(c, i + j) for j, c in enumerate(refs)] for i, refs in GTS.items()}
    res = {i: _with_breaks(c, i + 3) for i, c in RES.items()}
    assert gts[0][0] == "The\rsmall red cube has moved to the left." and res[1] == "There\u0085is no change."
    assert_scores_equal(score_captions(gts, res), GOLDEN)  # the golden values of the clean captions


@needs_java
def test_identical_captions_with_line_breaks_keep_bleu_4_at_one():
    # Each id's hypothesis is the text of its only reference. References of even ids and hypotheses of odd ids carry
    # a line break: without normalisation, each side's later captions would shift onto other ids.
    texts = ["the red cube moved to the left", "a small green sphere has been added", "nothing has changed at all here",
             "the large blue cylinder became yellow", "someone took away the gray cube", "the metal ball is now rubber",
             "a purple cube appeared behind the sphere", "the two scenes are the same", "the cyan sphere moved right"]
    gts = {f"pair{k}": [_with_breaks(t, k) if k % 2 == 0 else t] for k, t in enumerate(texts)}
    res = {f"pair{k}": _with_breaks(t, k) if k % 2 == 1 else t for k, t in enumerate(texts)}
    scores = score_captions(gts, res)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0, abs=1e-9)


@needs_java
def test_tokenizer_lines_that_do_not_match_the_captions_are_an_error(monkeypatch):
    # Switch the normalisation off: a caption with "\r" becomes two lines and the one-to-one check must refuse.
    monkeypatch.setattr(cap, "_one_line", lambda caption: caption)
    with pytest.raises(RuntimeError, match=r"PTB tokenization returned 5 lines for 4 captions.*wrong ids"):
        score_captions({i: [c] for i, c in RES.items()}, {**RES, 1: "There is\rno change."})
