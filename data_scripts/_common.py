"""Shared pieces of the data scripts: resumable checksummed downloads, Google Drive, archives, manifests, COCO files,
and the command-line and ``verify`` drivers every script uses.

Used by every script in this folder (run them as ``python data_scripts/<name>.py ...``; the folder is on
``sys.path`` then). The library never imports this.

Downloads (:func:`download`): HTTP ``Range`` requests continue a ``<file>.part`` left by an interrupted run; a server
that ignores ``Range`` (status 200) restarts the file. A response that ends before its ``Content-Length``, or that
sends nothing for ``--timeout`` seconds (default 60), is an error that keeps the ``.part`` for the next run to
resume; only a complete file is renamed to its final name. Where the source publishes a checksum it is checked and a
mismatch deletes the file and raises :class:`ChecksumError`; where none is published the script says so and records
the sha256 of what it downloaded in the manifest, so a later download can be compared. Google Drive files go through
``gdown`` when it is installed (it handles Drive's confirmation page); it is not a dependency of idclab, and without
it the scripts print the manual URL and the ``--archive`` option to use instead.

Manifest: ``<root>/idclab_manifest.json`` = {"dataset", "downloads": {name: {url, bytes, sha256, checksum}},
"splits": {split: {counts..., "ids": [...]}}}. ``verify`` (:class:`Verify`) writes the split part once everything is
present and afterwards reports any change of ids against it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "idclab_manifest.json"
USER_AGENT = "idclab-data-scripts/0.1 (research dataset download)"
CHUNK = 1 << 20  # bytes per read
MAX_LISTED = 20  # missing files printed by verify (all of them go to the report file)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
TIMEOUT = 60.0  # seconds without a byte before a download counts as stalled (``--timeout`` of every download)


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published checksum (the file has been deleted)."""


# ----------------------------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------------------------


def open_url(url: str, *, start: int = 0, timeout: float | None = None):
    """-> (HTTP status, readable body or None). Asks for bytes ``start``.. with a Range header when ``start`` > 0.

    The one network call of the scripts. ``timeout`` (default :data:`TIMEOUT`) bounds every wait for the server,
    the connection and each later read alike. 416 (range not satisfiable) comes back as (416, None).
    """
    timeout = TIMEOUT if timeout is None else timeout
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return 416, None
        raise RuntimeError(f"Downloading {url} failed: HTTP {e.code} {e.reason}. Check the URL in a browser; "
                           f"if the source moved, download by hand and pass the file with --archive.") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"Cannot reach {url} ({e.reason}); check the network connection and re-run: the download "
                           f"resumes where it stopped.") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise RuntimeError(f"{url} did not answer ({e or type(e).__name__}; timeout {timeout:g} s); re-run later "
                           f"(or with a longer --timeout): the download resumes where it stopped.") from None
    return resp.status, resp


def _announced_length(body) -> int | None:
    """The Content-Length of a response (the bytes still to come for a 206), None if the server did not say."""
    value = getattr(body, "headers", {}).get("Content-Length")
    return int(value) if value is not None and str(value).isdigit() else None


def download(url: str, dest: Path, *, checksum: tuple[str, str] | None = None, size: int | None = None,
             quiet: bool = False, timeout: float | None = None) -> dict:
    """Download ``url`` to ``dest`` resumably; check ``checksum`` = (algorithm, hex digest) if given.

    An existing ``dest`` is kept (and re-checked if a checksum is known); ``dest.part`` is continued with a Range
    request. A body shorter than its Content-Length, or no byte for ``timeout`` seconds (default :data:`TIMEOUT`),
    raises RuntimeError and keeps ``dest.part`` for the next run to resume; ``dest`` only ever holds a complete
    file. Returns {"url", "bytes", "sha256", "checksum": "<algo>:<hex> (published)" or "not published"}.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not dest.exists():
        start = part.stat().st_size if part.exists() else 0
        if size is not None and start > size:  # cannot be a prefix of the file
            part.unlink()
            start = 0
        status, body = ((416, None) if size is not None and 0 < start == size
                        else open_url(url, start=start, timeout=timeout))
        if status == 416:  # nothing left to fetch: the .part is complete (the checksum decides)
            pass
        elif status in (200, 206):
            mode = "ab" if status == 206 and start > 0 else "wb"  # 200: the server ignored Range -> restart
            if not quiet:
                print(f"  {'resuming at byte ' + str(start) if mode == 'ab' else 'fetching'} {url}", file=sys.stderr)
            _receive(url, body, part, mode, timeout=TIMEOUT if timeout is None else timeout)
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


def _receive(url: str, body, part: Path, mode: str, *, timeout: float) -> None:
    """Append (or write) the response ``body`` to ``part``; an incomplete body raises, leaving ``part`` to resume."""
    announced = _announced_length(body)
    read = getattr(body, "read1", body.read)  # read1: what has arrived, so a stall loses no received byte
    received = 0
    why = None
    try:
        with open(part, mode) as f:
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
    except TimeoutError:
        why = f"no data for {timeout:g} s"
    except (ConnectionError, http.client.HTTPException) as e:  # e.g. IncompleteRead, a reset connection
        why = f"the connection broke ({type(e).__name__})"
    finally:
        if hasattr(body, "close"):
            body.close()
    if why is None and announced is not None and received < announced:
        why = "the server closed the connection early"
    if why is not None:
        got = f"{received:,} of {announced:,}" if announced is not None else f"{received:,}"
        raise RuntimeError(f"Downloading {url} stopped after {got} bytes ({why}). The partial file {part} is kept: "
                           f"re-run the same command to resume it (a longer --timeout helps on a slow link).")


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


def move_images(src: Path, dest: Path, *, keep=lambda name: True, suffixes=IMAGE_SUFFIXES) -> int:
    """Move every image file under ``src`` (any depth) that ``keep`` accepts by name into the flat folder ``dest``.

    ``suffixes=None`` moves files of any type. Two different files with one name is an error (nothing is
    overwritten); an identical copy is skipped. Returns how many files were moved.
    """
    dest.mkdir(parents=True, exist_ok=True)
    moved = 0
    for path in sorted(src.rglob("*")):
        if (not path.is_file() or (suffixes is not None and path.suffix.lower() not in suffixes)
                or not keep(path.name)):
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
    """{id: [refs]} -> COCO caption ground truth in the structure of RCC's ``utils/eval_utils.py`` and CLIP4IDC's
    ``gt/*_reformat.json`` files.

    {"info", "licenses", "type": "captions", "images": [{"filename", "id"}], "annotations": [{"image_id",
    "caption", "id"}]}; the image entries use the reference files' ``filename`` key (equal to the id) and the
    annotation ids count from 0 in order. Readable by pycocotools' ``COCO`` and by
    :func:`idclab.metrics.captioning.load_caption_json`.
    """
    images, annotations = [], []
    for image_id, refs in gts.items():
        images.append({"filename": image_id, "id": image_id})
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


def check_ids(manifest: dict, split: str, ids: list[str], *, same_form=str) -> list[str]:
    """Problems of ``ids`` against the ids the manifest recorded for ``split`` (empty if none recorded).

    ``same_form`` maps a recorded id to the form ``ids`` use (ids recorded by an older version in another form).
    """
    recorded = manifest.get("splits", {}).get(split, {}).get("ids")
    if recorded is None:
        return []
    recorded = [same_form(i) for i in recorded]
    if recorded == ids:
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


class Verify:
    """The ``verify`` driver of every script: counts, missing files and id changes in, one report and exit code out.

    A script's ``verify`` reads each split with :meth:`read`, reports with :meth:`count`, :meth:`missing` and
    :meth:`problem`, records what it found with :meth:`record` (which compares the ids with the manifest unless
    ``--update``), and returns :meth:`finish`: 0 and the manifest written when nothing is wrong, 1 otherwise.
    Nothing is ever dropped or changed in the data.
    """

    def __init__(self, args, dataset: str, *, same_form=str):
        self.root: Path = args.root
        self.dataset, self.update, self.same_form = dataset, bool(getattr(args, "update", False)), same_form
        self.split_arg = getattr(args, "split", "all")
        self.report = self.root / "verify_missing.txt"
        if self.report.exists():
            self.report.unlink()
        self.manifest = read_manifest(self.root, dataset)
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.entries: dict[str, dict] = {}

    @classmethod
    def start(cls, args, dataset: str, download_command: str, **kw) -> "Verify | None":
        """A Verify for ``args.root``, or None after saying how to download when the folder does not exist."""
        if not args.root.is_dir():
            print(f"ERROR: {args.root} does not exist. Download the data with\n  "
                  f"{download_command.format(root=args.root)}")
            return None
        return cls(args, dataset, **kw)

    def splits(self, all_splits) -> list[str]:
        """The splits ``--split`` selects ("all": every one of ``all_splits``)."""
        return list(all_splits) if self.split_arg == "all" else [self.split_arg]

    def read(self, split: str, reader, *args):
        """``reader(*args)``, or None after recording its error (missing or damaged files) as a problem of split."""
        try:
            return reader(*args)
        except (FileNotFoundError, ValueError) as e:
            self.problems.append(f"ERROR {split}: {e}")
            return None

    def count(self, what: str, observed: int, expected: int | None, *, source: str) -> None:
        """Warn (not fail) when ``observed`` differs from a published count."""
        line = compare_count(what, observed, expected, source=source)
        if line:
            self.warnings.append(line)

    def missing(self, split: str, paths: list[Path], total: int, what: str = "image files") -> None:
        """List the missing ``paths`` of a split (all of them in verify_missing.txt); a problem if there are any."""
        if paths:
            report_missing(self.root, split, paths, self.report)
            self.problems.append(f"MISSING {split}: {len(paths)} of {total} {what} (listed above)")

    def problem(self, line: str) -> None:
        self.problems.append(line)

    def record(self, split: str, entry: dict) -> None:
        """What verify found for ``split`` (``entry["ids"]`` compared with the manifest unless ``--update``)."""
        if not self.update:
            self.problems += check_ids(self.manifest, split, entry["ids"], same_form=self.same_form)
        self.entries[split] = entry

    def finish(self, ok: str | None = None) -> int:
        """Print warnings and problems; with no problems, record the entries in the manifest. -> exit code (0 / 1).

        A split already in the manifest is only rewritten with ``--update``. ``ok`` replaces the default summary
        ("<split> <n> pairs, ...") of the closing OK line.
        """
        for line in self.warnings + self.problems:
            print(line)
        if self.problems:
            print("FAILED (nothing was dropped or changed): re-run the download (or prepare), which resumes and keeps "
                  "what is there, then verify again; pass --update to accept ids that changed on purpose.")
            return 1
        manifest = read_manifest(self.root, self.dataset)
        for split, entry in self.entries.items():
            if self.update or split not in manifest["splits"]:
                manifest["splits"][split] = entry
        write_manifest(self.root, manifest)
        summary = ok or ", ".join(f"{s} {v['pairs']:,} pairs" for s, v in self.entries.items())
        print(f"OK: {summary}; manifest {self.root / MANIFEST}")
        return 0


# ----------------------------------------------------------------------------------------------------------------
# Archives given by hand or downloaded, unpacked into the dataset folder
# ----------------------------------------------------------------------------------------------------------------


def given_archive(root: Path, dataset: str, path: Path, *, url: str, name: str | None = None) -> Path:
    """An archive the user downloaded by hand (``--archive``): checked to exist, its sha256 recorded."""
    if not path.is_file():
        raise SystemExit(f"--archive {path} does not exist.")
    name = name or path.name
    print(f"  checksum not published for {name}; recording its sha256 in the manifest", file=sys.stderr)
    record_download(root, dataset, name, dict(url=url, bytes=path.stat().st_size, sha256=file_hash(path),
                                              checksum="not published"))
    return path


@contextmanager
def unpacked(archive: Path, root: Path):
    """Extract ``archive`` into ``root/_extract`` (emptied first: an interrupted run starts again); removed after."""
    tmp = root / "_extract"
    if tmp.exists():
        shutil.rmtree(tmp)
    print(f"  extracting {archive} ...", file=sys.stderr)
    extract(archive, tmp)
    yield tmp
    shutil.rmtree(tmp)


def find_folder(tree: Path, name: str, archive: Path, what: str) -> Path:
    """The shallowest folder called ``name`` in an extracted ``tree``; SystemExit if the archive has none."""
    found = sorted((p for p in tree.rglob(name) if p.is_dir()), key=lambda p: len(p.parts))
    if not found:
        raise SystemExit(f"{archive} has no {name}/ folder: it is not {what}.")
    return found[0]


def merge_folder(src: Path, dest: Path) -> None:
    """Move the children of ``src`` into ``dest``; what ``dest`` already holds is kept, never overwritten."""
    dest.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        if not (dest / child.name).exists():
            shutil.move(str(child), str(dest / child.name))


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def script_parser(script: str, doc: str):
    """(parser, subcommands) of ``python data_scripts/<script>``, described by the first line of its docstring."""
    parser = argparse.ArgumentParser(prog=f"python data_scripts/{script}", description=doc.split("\n")[0])
    return parser, parser.add_subparsers(dest="command", required=True)


def add_download(sub, func, *, help: str, root_help: str, archive_help: str | None = None,
                 keep_archive: bool = True) -> argparse.ArgumentParser:
    """The ``download`` subcommand: --root, --timeout, and (when the script takes one) --archive, --keep-archive."""
    d = sub.add_parser("download", help=help)
    d.add_argument("--root", type=Path, required=True, help=root_help)
    if archive_help is not None:
        d.add_argument("--archive", type=Path, default=None, help=archive_help)
    if keep_archive:
        d.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after extraction")
    d.add_argument("--timeout", type=float, default=TIMEOUT,
                   help=f"seconds without data before a download counts as stalled (default {TIMEOUT:g}); the "
                        f"partial file is kept and the next run resumes it")
    d.set_defaults(func=func)
    return d


def add_prepare(sub, func, splits, *, out_help: str) -> argparse.ArgumentParser:
    """The ``prepare`` subcommand of the caption datasets: --root, --split (default test), --out."""
    p = sub.add_parser("prepare", help="write the COCO-format evaluation ground truth of a split")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--split", choices=splits, default="test")
    p.add_argument("--out", type=Path, default=None, help=out_help)
    p.set_defaults(func=func)
    return p


def add_verify(sub, func, splits=None, *, help: str = "list missing files, check counts, write / check the manifest",
               update_help: str = "rewrite the manifest's ids instead of comparing them") -> argparse.ArgumentParser:
    """The ``verify`` subcommand: --root, --split all|<splits> (when ``splits`` is given), --update."""
    v = sub.add_parser("verify", help=help)
    v.add_argument("--root", type=Path, required=True)
    if splits is not None:
        v.add_argument("--split", choices=("all",) + tuple(splits), default="all")
    v.add_argument("--update", action="store_true", help=update_help)
    v.set_defaults(func=func)
    return v


def run_cli(parser, argv: list[str] | None) -> int:
    """Parse, run the chosen subcommand and turn the library's errors (which name the fix) into exit code 2."""
    global TIMEOUT
    args = parser.parse_args(argv)
    default_timeout = TIMEOUT
    if getattr(args, "timeout", None) is not None:
        if args.timeout <= 0:
            parser.error(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
        TIMEOUT = args.timeout  # read by every download of this run
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # the message says what to do
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        TIMEOUT = default_timeout


def write_prepared(out: Path, gts: dict[str, list[str]], *, description: str, id_name: str) -> None:
    """Write the COCO-format ground truth of one split and say how to score against it."""
    write_json(out, coco_ground_truth(gts, description=description))
    n_refs = sum(len(v) for v in gts.values())
    print(f"wrote {out} ({len(gts):,} pairs, {n_refs:,} references)\n"
          f"score generated captions ({{{id_name}: caption}}) with\n  idclab score-captions {out} RESULTS.json")
