"""data_scripts against a real HTTP server on 127.0.0.1: downloads that end early or stall, FashionIQ images that
arrive empty or broken.

The server runs in a thread for the length of one test; a stalling response waits at most a few seconds (and is
released when the test ends), so nothing outlives the test.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idclab.data import fashioniq as fiq

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "data_scripts"


def _import_scripts():
    sys.path.insert(0, str(SCRIPTS_DIR))
    try:
        return {name: importlib.import_module(name) for name in ("_common", "fashioniq", "spot_the_diff")}
    finally:
        sys.path.remove(str(SCRIPTS_DIR))


SCRIPTS = _import_scripts()
common = SCRIPTS["_common"]

BLOB = bytes(range(256)) * 40  # 10,240 bytes
STALL_AFTER = 1_000  # bytes a stalling response sends before it goes quiet
STALL_LIMIT_S = 5.0  # the longest a stalling response waits (it is released as soon as the test ends)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) with Range support; ``server.modes[path]`` can make a response end
    early ("short": half the announced bytes, then the connection closes) or stall ("stall")."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers["Range"] else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        mode = self.server.modes.get(self.path)
        if mode == "short":
            self.wfile.write(body[: len(body) // 2])
        elif mode == "stall":
            self.wfile.write(body[:STALL_AFTER])
            self.wfile.flush()
            self.server.release.wait(STALL_LIMIT_S)
        else:
            self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def web():
    """A local HTTP server: ``web.files[path] = bytes``, ``web.modes[path] = "short" | "stall"``, ``web.url(path)``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.files, server.modes, server.release = {}, {}, threading.Event()
    server.url = lambda path: f"http://127.0.0.1:{server.server_port}{path}"
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=STALL_LIMIT_S)


# ----------------------------------------------------------------------------------------------------------------
# Downloads that end early or stall
# ----------------------------------------------------------------------------------------------------------------


def test_download_that_ends_before_its_content_length_keeps_the_part_and_resumes(web, tmp_path):
    web.files["/blob.bin"] = BLOB
    web.modes["/blob.bin"] = "short"
    dest = tmp_path / "blob.bin"
    with pytest.raises(RuntimeError, match=r"stopped after 5,120 of 10,240 bytes .*closed the connection early.*"
                                           r"re-run the same command to resume"):
        common.download(web.url("/blob.bin"), dest)
    assert not dest.exists()  # never the finished file
    assert (tmp_path / "blob.bin.part").read_bytes() == BLOB[:5120]  # kept for resuming
    del web.modes["/blob.bin"]
    info = common.download(web.url("/blob.bin"), dest)  # asks for the rest only (a 206), then completes
    assert dest.read_bytes() == BLOB and not (tmp_path / "blob.bin.part").exists()
    assert info["bytes"] == len(BLOB)


def test_resumed_download_that_ends_early_again_is_still_an_error(web, tmp_path):
    web.files["/blob.bin"] = BLOB
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:2000])
    web.modes["/blob.bin"] = "short"  # the 206 for bytes 2000.. stops half-way too
    with pytest.raises(RuntimeError, match="stopped after 4,120 of 8,240 bytes"):
        common.download(web.url("/blob.bin"), tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin.part").read_bytes() == BLOB[:2000 + 4120] and not (tmp_path / "blob.bin").exists()


def test_download_that_stalls_times_out_and_keeps_the_part(web, tmp_path):
    web.files["/blob.bin"] = BLOB
    web.modes["/blob.bin"] = "stall"
    dest = tmp_path / "blob.bin"
    with pytest.raises(RuntimeError, match=r"stopped after 1,000 of 10,240 bytes \(no data for 1 s\)"):
        common.download(web.url("/blob.bin"), dest, timeout=1.0)
    assert not dest.exists() and (tmp_path / "blob.bin.part").read_bytes() == BLOB[:STALL_AFTER]


def test_timeout_option_of_a_download_command(web, tmp_path, monkeypatch, capsys):
    script = SCRIPTS["spot_the_diff"]
    monkeypatch.setattr(script, "ANNOTATION_URL", web.url("/annotations/{split}.json"))
    web.files["/annotations/train.json"] = json.dumps([{"img_id": "1", "sentences": ["a car left"]}] * 50).encode()
    web.modes["/annotations/train.json"] = "stall"
    root = tmp_path / "spot"
    assert script.main(["download", "--root", str(root), "--timeout", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "no data for 0.5 s" in err and "train.json.part is kept" in err
    assert not (root / "annotations" / "train.json").exists()
    assert common.TIMEOUT == 60  # the option holds for that run only
    with pytest.raises(SystemExit):
        script.main(["download", "--root", str(root), "--timeout", "0"])
    assert "--timeout must be a positive number" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# FashionIQ: empty and broken images are missing, not present
# ----------------------------------------------------------------------------------------------------------------


def _png_bytes(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_fashioniq_download_lists_an_empty_or_broken_image_as_missing(web, tmp_path, monkeypatch, capsys):
    script = SCRIPTS["fashioniq"]
    monkeypatch.setattr(script, "REPO_URL", web.url("/repo/{path}"))
    monkeypatch.setattr(script, "URL_LIST_URL", web.url("/urls/asin2url.{cat}.txt"))
    for rel in script.annotation_files():  # dress val: A1 -> A2; every other file empty
        entries = []
        if rel == "captions/cap.dress.val.json":
            entries = [{"candidate": "A1", "target": "A2", "captions": ["is red", "is longer"]}]
        elif rel == "image_splits/split.dress.val.json":
            entries = ["A1", "A2", "A3"]
        web.files[f"/repo/{rel}"] = json.dumps(entries).encode()
    web.files["/urls/asin2url.dress.txt"] = "".join(f"{a}\t{web.url(f'/img/{a}.jpg')}\n" for a in ("A1", "A2", "A3"))\
        .encode()
    for cat in ("shirt", "toptee"):
        web.files[f"/urls/asin2url.{cat}.txt"] = b""
    web.files["/img/A1.jpg"] = _png_bytes(0)  # a good image (PNG bytes under a .jpg name decode fine)
    web.files["/img/A2.jpg"] = b""  # an Amazon URL that answers with a 0-byte file
    web.files["/img/A3.jpg"] = b"<html>gone</html>"  # ... or with something that is not an image
    root = tmp_path / "fiq"
    assert script.main(["download", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "2 of 3 images could not be fetched" in out and "A2, A3" in out
    failed = [line.split("\t") for line in (root / "download_failed.txt").read_text().splitlines()]
    assert [(f[0], f[2].split(" answered with ")[1]) for f in failed] == [("A2", "an empty file"),
                                                                          ("A3", "not a readable image")]
    assert sorted(p.name for p in (root / "images").iterdir()) == ["A1.jpg"]  # neither is kept as present
    assert set(fiq.image_index(root)) == {"A1"}
    assert script.main(["verify", "--root", str(root), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert "MISSING val: 2 of 3 images" in out and "images/A2" in out and "images/A3" in out
    (root / "images" / "A2.jpg").write_bytes(b"")  # an empty file left by an older download
    assert fiq.missing_images(root, ["A1", "A2"]) == ["A2"]
    web.files["/img/A2.jpg"] = _png_bytes(1)  # the URL works again: the re-run fetches it (and only the missing)
    assert script.main(["download", "--root", str(root)]) == 1
    assert "1 of 2 images could not be fetched" in capsys.readouterr().out
    assert (root / "images" / "A2.jpg").read_bytes() == web.files["/img/A2.jpg"]
