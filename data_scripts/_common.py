"""Shared pieces of the data scripts: resumable checksummed downloads, Google Drive, archives, manifests, COCO files.

Used by ``clevr_change.py``, ``spot_the_diff.py`` and ``image_editing_request.py`` in this folder (run them as
``python data_scripts/<name>.py ...``; the folder is on ``sys.path`` then). The library never imports this.

Downloads (:func:`download`): HTTP ``Range`` requests continue a ``<file>.part`` left by an interrupted run; a server
that ignores ``Range`` (status 200) restarts the file. Where the source publishes a checksum it is checked and a
mismatch deletes the file and raises :class:`ChecksumError`; where none is published the script says so and records
the sha256 of what it downloaded in the manifest, so a later download can be compared. Google Drive files go through
``gdown`` when it is installed (it handles Drive's confirmation page); it is not a dependency of idclab, and without
it the scripts print the manual URL and the ``--archive`` option to use instead.

Manifest: ``<root>/idclab_manifest.json`` = {"dataset", "downloads": {name: {url, bytes, sha256, checksum}},
"splits": {split: {counts..., "ids": [...]}}}. ``verify`` writes the split part once everything is present and
afterwards reports any change of ids against it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

MANIFEST = "idclab_manifest.json"
USER_AGENT = "idclab-data-scripts/0.1 (research dataset download)"
CHUNK = 1 << 20  # bytes per read
MAX_LISTED = 20  # missing files printed by verify (all of them go to the report file)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published checksum (the file has been deleted)."""


# ----------------------------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------------------------


def open_url(url: str, *, start: int = 0):
    """-> (HTTP status, readable body or None). Asks for bytes ``start``.. with a Range header when ``start`` > 0.

    The one network call of the scripts (tests replace it). 416 (range not satisfiable) comes back as (416, None).
    """
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return 416, None
        raise RuntimeError(f"Downloading {url} failed: HTTP {e.code} {e.reason}. Check the URL in a browser; "
                           f"if the source moved, download by hand and pass the file with --archive.") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"Cannot reach {url} ({e.reason}); check the network connection and re-run: the download "
                           f"resumes where it stopped.") from None
    return resp.status, resp


def download(url: str, dest: Path, *, checksum: tuple[str, str] | None = None, size: int | None = None,
             quiet: bool = False) -> dict:
    """Download ``url`` to ``dest`` resumably; check ``checksum`` = (algorithm, hex digest) if given.

    An existing ``dest`` is kept (and re-checked if a checksum is known); ``dest.part`` is continued with a Range
    request. Returns {"url", "bytes", "sha256", "checksum": "<algo>:<hex> (published)" or "not published"}.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not dest.exists():
        start = part.stat().st_size if part.exists() else 0
        if size is not None and start > size:  # cannot be a prefix of the file
            part.unlink()
            start = 0
        status, body = (416, None) if size is not None and 0 < start == size else open_url(url, start=start)
        if status == 416:  # nothing left to fetch: the .part is complete (the checksum decides)
            pass
        elif status in (200, 206):
            mode = "ab" if status == 206 and start > 0 else "wb"  # 200: the server ignored Range -> restart
            if not quiet:
                print(f"  {'resuming at byte ' + str(start) if mode == 'ab' else 'fetching'} {url}", file=sys.stderr)
            with open(part, mode) as f:
                while True:
                    chunk = body.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
            if hasattr(body, "close"):
                body.close()
        else:
            raise RuntimeError(f"Downloading {url} failed: HTTP {status}.")
        part.replace(dest)
    if checksum is not None:
        algo, expected = checksum
        got = file_hash(dest, algo)
        if got.lower() != expected.lower():
            dest.unlink()
            raise ChecksumError(f"{dest.name}: {algo} {got} does not match the published {expected}; the file was "
                                f"deleted. Re-run to download it again; if it fails again the source has changed.")
    elif not quiet:
        print(f"  checksum not published for {dest.name}; recording its sha256 in the manifest", file=sys.stderr)
    return dict(url=url, bytes=dest.stat().st_size, sha256=file_hash(dest, "sha256"),
                checksum=f"{checksum[0]}:{checksum[1]} (published)" if checksum else "not published")


def file_hash(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def read_url_json(url: str):
    """GET a small JSON document (no resume)."""
    status, body = open_url(url)
    if status != 200:
        raise RuntimeError(f"GET {url} answered HTTP {status}.")
    return json.loads(body.read().decode("utf-8"))


# ----------------------------------------------------------------------------------------------------------------
# Google Drive
# ----------------------------------------------------------------------------------------------------------------


def drive_urls(file_id: str) -> tuple[str, str]:
    """(page a person opens, direct URL gdown uses) of a Google Drive file."""
    return f"https://drive.google.com/file/d/{file_id}/view", f"https://drive.google.com/uc?id={file_id}"


def _import_gdown():
    try:
        import gdown
    except ImportError:
        return None
    return gdown


def gdrive_download(file_id: str, dest: Path, *, script: str, root: Path) -> Path:
    """Fetch a Google Drive file with gdown (resuming where gdown can); without gdown, exit with manual steps."""
    page, direct = drive_urls(file_id)
    if dest.exists():
        return dest
    gdown = _import_gdown()
    if gdown is None:
        raise SystemExit(
            f"gdown is not installed, and Google Drive needs it (Drive answers large files with a confirmation page). "
            f"Either\n  pip install gdown   and re-run, or\n  open {page} in a browser, download the file, and run\n"
            f"  python data_scripts/{script} download --root {root} --archive PATH_TO_THE_DOWNLOADED_FILE")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        out = gdown.download(id=file_id, output=str(part), quiet=False, resume=True)
    except TypeError:  # older gdown: no id= / resume=
        out = gdown.download(direct, str(part), quiet=False)
    if not out or not part.exists():
        raise SystemExit(f"gdown could not fetch {page} (quota or access limits are common on Drive). Download it in "
                         f"a browser and run\n  python data_scripts/{script} download --root {root} --archive PATH")
    part.replace(dest)
    return dest


# ----------------------------------------------------------------------------------------------------------------
# Archives and files
# ----------------------------------------------------------------------------------------------------------------


def extract(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest`` (format from the content, not the name).

    Members that would land outside ``dest`` (absolute paths, ``..``, links) are refused.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()

    def safe(name: str) -> None:
        target = (dest / name).resolve()
        if target != root and root not in target.parents:
            raise RuntimeError(f"{archive.name} holds a member outside the target folder ({name!r}); refusing it.")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                safe(name)
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = t.getmembers()
            for m in members:
                safe(m.name)
                if m.issym() or m.islnk() or m.isdev():
                    raise RuntimeError(f"{archive.name} holds a link or device ({m.name!r}); refusing it.")
            safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4 / 3.12
            t.extractall(dest, members=members, **safety)
    else:
        raise RuntimeError(f"{archive} is neither a zip nor a tar archive (an HTML error page from Drive?). Delete it, "
                           f"download it again, or pass a good copy with --archive.")


def move_images(src: Path, dest: Path, *, keep=lambda name: True) -> int:
    """Move every image file under ``src`` (any depth) into the flat folder ``dest``; returns how many.

    Two different files with one name is an error (nothing is overwritten); an identical copy is skipped.
    """
    dest.mkdir(parents=True, exist_ok=True)
    moved = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or not keep(path.name):
            continue
        if path.name.startswith("._"):  # macOS resource forks in zips
            continue
        target = dest / path.name
        if target.exists():
            if file_hash(target) != file_hash(path):
                raise RuntimeError(f"Two different images are called {path.name} ({path} and {target}); "
                                   f"cannot flatten them into {dest}.")
            continue
        shutil.move(str(path), str(target))
        moved += 1
    return moved


def write_json(path: Path, obj, *, indent: int | None = None) -> None:
    """Write JSON atomically (a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------------------
# Terms, manifest, COCO ground truth, verify reports
# ----------------------------------------------------------------------------------------------------------------


def print_terms(name: str, *, paper: str, sources: list[str], terms: str) -> None:
    """Say where the data comes from and on which terms, before anything is downloaded."""
    print(f"{name}\n  paper:   {paper}", file=sys.stderr)
    for s in sources:
        print(f"  source:  {s}", file=sys.stderr)
    print(f"  terms:   {terms}\n  By downloading you accept the source's terms. idclab does not re-host any of it.\n",
          file=sys.stderr)


def read_manifest(root: Path, dataset: str) -> dict:
    path = Path(root) / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if manifest.get("dataset", dataset) != dataset:
        raise SystemExit(f"{path} belongs to {manifest['dataset']!r}, not {dataset!r}: use another --root.")
    manifest.setdefault("dataset", dataset)
    manifest.setdefault("downloads", {})
    manifest.setdefault("splits", {})
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    write_json(Path(root) / MANIFEST, manifest, indent=1)


def record_download(root: Path, dataset: str, name: str, info: dict) -> None:
    manifest = read_manifest(root, dataset)
    manifest["downloads"][name] = info
    write_manifest(root, manifest)


def coco_ground_truth(gts: dict[str, list[str]], *, description: str) -> dict:
    """{id: [refs]} -> COCO caption ground truth (RCC ``eval_utils`` / CLIP4IDC ``*_reformat.json`` shape).

    {"info", "licenses", "type": "captions", "images": [{"id", "file_name"}], "annotations": [{"image_id",
    "caption", "id"}]}; annotation ids count from 0 in order. Readable by pycocotools' ``COCO`` and by
    :func:`idclab.metrics.captioning.load_caption_json`.
    """
    images, annotations = [], []
    for image_id, refs in gts.items():
        images.append({"id": image_id, "file_name": image_id})
        for ref in refs:
            annotations.append({"image_id": image_id, "caption": ref, "id": len(annotations)})
    info = {"description": description, "contributor": "idclab data_scripts", "version": "1", "year": "",
            "url": "", "date_created": ""}
    return {"info": info, "licenses": [], "type": "captions", "images": images, "annotations": annotations}


def compare_count(what: str, observed: int, expected: int | None, *, source: str) -> str | None:
    """A warning line if ``observed`` differs from the reference count ``expected`` (None: nothing to compare)."""
    if expected is None or observed == expected:
        return None
    return f"WARNING {what}: observed {observed:,}, expected {expected:,} ({source})"


def report_missing(root: Path, split: str, missing: list[Path], report: Path) -> None:
    """Print the first MAX_LISTED missing files of a split; append all of them to ``report``."""
    print(f"MISSING {split}: {len(missing)} image files")
    for p in missing[:MAX_LISTED]:
        print(f"  {p.relative_to(root) if p.is_relative_to(root) else p}")
    if len(missing) > MAX_LISTED:
        print(f"  ... and {len(missing) - MAX_LISTED} more; the full list is in {report}")
    with open(report, "a", encoding="utf-8") as f:
        for p in missing:
            f.write(f"{split}\t{p}\n")


def check_ids(manifest: dict, split: str, ids: list[str]) -> list[str]:
    """Problems of ``ids`` against the ids the manifest recorded for ``split`` (empty if none recorded)."""
    recorded = manifest.get("splits", {}).get(split, {}).get("ids")
    if recorded is None or recorded == ids:
        return []
    added, removed = sorted(set(ids) - set(recorded)), sorted(set(recorded) - set(ids))
    out = [f"CHANGED {split}: the ids differ from the manifest ({len(recorded)} recorded, {len(ids)} now)"]
    if added:
        out.append(f"  new: {added[:10]}{' ...' if len(added) > 10 else ''} ({len(added)})")
    if removed:
        out.append(f"  gone: {removed[:10]}{' ...' if len(removed) > 10 else ''} ({len(removed)})")
    if not added and not removed:
        out.append("  same ids in another order")
    return out


def finish_verify(root: Path, dataset: str, splits: dict[str, dict], *, problems: list[str], warnings_: list[str],
                  update: bool) -> int:
    """Print warnings and problems; with no problems, record ``splits`` in the manifest. -> exit code (0 ok, 1 not).

    A split already in the manifest is only rewritten with ``update`` (the caller compares ids first).
    """
    for line in warnings_ + problems:
        print(line)
    if problems:
        print("FAILED (nothing was dropped or changed): re-run the download, which resumes and keeps what is there, "
              "then verify again; pass --update to accept ids that changed on purpose.")
        return 1
    manifest = read_manifest(root, dataset)
    for split, entry in splits.items():
        if update or split not in manifest["splits"]:
            manifest["splits"][split] = entry
    write_manifest(root, manifest)
    counts = ", ".join(f"{s} {v['pairs']:,} pairs" for s, v in splits.items())
    print(f"OK: {counts}; manifest {root / MANIFEST}")
    return 0


def run_cli(parser, argv: list[str] | None) -> int:
    """Parse, run the chosen subcommand and turn the library's errors (which name the fix) into exit code 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # the message says what to do
        print(f"error: {e}", file=sys.stderr)
        return 2


def write_prepared(out: Path, gts: dict[str, list[str]], *, description: str, id_name: str) -> None:
    """Write the COCO-format ground truth of one split and say how to score against it."""
    write_json(out, coco_ground_truth(gts, description=description))
    n_refs = sum(len(v) for v in gts.values())
    print(f"wrote {out} ({len(gts):,} pairs, {n_refs:,} references)\n"
          f"score generated captions ({{{id_name}: caption}}) with\n  idclab score-captions {out} RESULTS.json")
