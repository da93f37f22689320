"""FashionIQ (Wu et al., CVPR 2021): download what can be scripted, verify.

    python data_scripts/fashioniq.py download --root DIR [--archive MIRROR.zip | --skip-images]
    python data_scripts/fashioniq.py verify   --root DIR [--split all|train|val|test] [--update]

Sources. The URLs below are constructed from the reference notes and are **unverified offline** (written without
network access; the steps are tested on small trees of the same layout only; branch ``master`` unverified):

* annotations, from GitHub raw (``XiaoxiaoGuo/fashion-iq``; CDLA licence)::

      https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master/captions/cap.{cat}.{split}.json
      https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master/image_splits/split.{cat}.{split}.json
      -> DIR/captions/..., DIR/image_splits/...

* images, from the Amazon URLs of ``hongwang600/fashion-iq-metadata``::

      https://raw.githubusercontent.com/hongwang600/fashion-iq-metadata/master/image_url/asin2url.{cat}.txt
      (lines "ASIN <tab> URL") -> each image to DIR/images/<ASIN>.jpg

  **Many of these URLs are dead** (fashion-iq issues #8, #13; SEARLE #11): failures are listed in
  DIR/download_failed.txt and the command exits with status 1. That repository's ``broken_links/`` folder holds 13
  of the dead images; the complete set (74,381 images) is in community mirrors: the reshares in
  XiaoxiaoGuo/fashion-iq issue #18, a Kaggle copy "fashioniq-bit", the Hugging Face dataset ``Plachta/FashionIQ``.
  Download a mirror's archive by hand and pass it with ``--archive``: every image in it is moved, flattened, into
  DIR/images. A re-run fetches only the images not yet there. A dead URL that answers with an HTML page instead
  of an error is not detected here; the loader fails on it when reading.

No checksums are published; the annotation files' sha256 are recorded in DIR/idclab_manifest.json.
Terms: annotations CDLA (variant not stated); images are Amazon product photos (Amazon copyright). Research use;
cite; do not re-host.

``verify`` reads every split and category, lists every missing image by ASIN (never drops a triplet) in
DIR/verify_missing.txt, checks that each candidate / target is in its category's gallery, prints the counts against
the published ones (val triplets 2,017 / 2,038 / 1,961; val images 3,817 / 6,346 / 5,373; 74,381 unique ASINs over
all splits, 77,683 split-file entries) and records the triplets and ASINs per split in the manifest.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import _common

from idclab.data import fashioniq as fiq
from idclab.data._common import listing

DATASET = "fashioniq"
REPO_URL = "https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master/{path}"
URL_LIST_URL = "https://raw.githubusercontent.com/hongwang600/fashion-iq-metadata/master/image_url/asin2url.{cat}.txt"
FAILED_REPORT = "download_failed.txt"
TERMS = dict(
    paper="Wu, Gao, Guo, Al-Halah, Rennie, Grauman, Feris. Fashion IQ: A New Dataset Towards Retrieving Images by "
          "Natural Language Feedback. CVPR 2021.",
    sources=["annotations: " + REPO_URL.format(path="{captions,image_splits}/...") + "  [unverified offline]",
             "images: Amazon URLs from " + URL_LIST_URL.format(cat="{dress,shirt,toptee}") + " (many dead); "
             "mirrors: " + fiq.MIRRORS],
    terms="annotations CDLA (variant not stated); images are Amazon product photos (Amazon copyright). Research "
          "use; cite the paper; do not re-host.",
)


def annotation_files() -> list[str]:
    """Paths (relative to the repository and to --root) of the 18 annotation files."""
    folders = (("captions", "cap"), ("image_splits", "split"))
    return [f"{folder}/{prefix}.{cat}.{split}.json" for folder, prefix in folders
            for cat in fiq.CATEGORIES for split in fiq.SPLITS]


def parse_url_list(text: str) -> dict[str, str]:
    """{ASIN: URL} of an ``asin2url.{cat}.txt`` file ("ASIN <whitespace> URL" per line; blank lines skipped)."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {n} of the URL list is not 'ASIN URL': {line!r}")
        out.setdefault(parts[0], parts[1])
    return out


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("FashionIQ", **TERMS)
    for rel in annotation_files():
        info = _common.download(REPO_URL.format(path=rel), root / rel, quiet=True)
        _common.record_download(root, DATASET, rel, info)
    print(f"  annotations: {len(annotation_files())} files in {root / 'captions'} and {root / 'image_splits'}",
          file=sys.stderr)
    if args.skip_images:
        print(f"Images skipped. Next:\n  python data_scripts/fashioniq.py verify --root {root}")
        return 0
    if args.archive is not None:
        return _from_archive(root, args.archive)
    return _from_urls(root)


def _from_archive(root: Path, archive: Path) -> int:
    if not archive.is_file():
        raise SystemExit(f"--archive {archive} does not exist.")
    _common.record_download(root, DATASET, f"images:{archive.name}", dict(
        url="a mirror (given with --archive)", bytes=archive.stat().st_size, sha256=_common.file_hash(archive),
        checksum="not published"))
    tmp = root / "_extract"
    if tmp.exists():
        shutil.rmtree(tmp)
    print(f"  extracting {archive} ...", file=sys.stderr)
    _common.extract(archive, tmp)
    moved = _common.move_images(tmp, root / "images")
    shutil.rmtree(tmp)
    print(f"Done: {moved} images moved into {root / 'images'}. Next:\n"
          f"  python data_scripts/fashioniq.py verify --root {root}")
    return 0


def _from_urls(root: Path) -> int:
    urls: dict[str, str] = {}  # ASIN -> URL, over all categories (images are indexed globally)
    for cat in fiq.CATEGORIES:
        dest = root / "_downloads" / f"asin2url.{cat}.txt"
        _common.record_download(root, DATASET, dest.name, _common.download(URL_LIST_URL.format(cat=cat), dest,
                                                                           quiet=True))
        for asin, url in parse_url_list(dest.read_text(encoding="utf-8")).items():
            urls.setdefault(asin, url)
    present = fiq.image_index(root)
    todo = [a for a in urls if a not in present]
    print(f"  {len(urls):,} ASINs in the URL lists, {len(urls) - len(todo):,} already present, fetching "
          f"{len(todo):,} (many Amazon URLs are dead)", file=sys.stderr)
    failed: list[tuple[str, str, str]] = []  # (ASIN, URL, why)
    for k, asin in enumerate(todo, 1):
        url = urls[asin]
        suffix = Path(urlparse(url).path).suffix.lower()
        dest = root / "images" / f"{asin}{suffix if suffix in fiq.IMAGE_SUFFIXES else '.jpg'}"
        try:
            _common.download(url, dest, quiet=True)
        except RuntimeError as e:  # a dead URL: listed below and in the report, the others go on
            failed.append((asin, url, str(e).split(". ")[0]))
        if k % 1000 == 0:
            print(f"  {k:,} / {len(todo):,} ({len(failed):,} failed)", file=sys.stderr)
    manifest = _common.read_manifest(root, DATASET)
    manifest["downloads"]["images:amazon_urls"] = dict(url=URL_LIST_URL.format(cat="{cat}"), asins=len(urls),
                                                       fetched=len(todo) - len(failed), failed=len(failed),
                                                       checksum="not published")
    _common.write_manifest(root, manifest)
    report = root / FAILED_REPORT
    if failed:
        report.write_text("".join(f"{a}\t{u}\t{why}\n" for a, u, why in failed), encoding="utf-8")
        print(f"{len(failed):,} of {len(todo):,} images could not be fetched (listed in {report}): "
              f"{listing([a for a, _, _ in failed])}\nGet them from {fiq.MIRRORS}, then run\n"
              f"  python data_scripts/fashioniq.py verify --root {root}")
        return 1
    if report.exists():
        report.unlink()
    print(f"Done: every image of the URL lists is in {root / 'images'}. Next:\n"
          f"  python data_scripts/fashioniq.py verify --root {root}")
    return 0


def cmd_verify(args) -> int:
    root: Path = args.root
    if not root.is_dir():
        print(f"ERROR: {root} does not exist. Download the data with\n  {fiq.DOWNLOAD_COMMAND.format(root=root)}")
        return 1
    splits = list(fiq.SPLITS) if args.split == "all" else [args.split]
    report = root / "verify_missing.txt"
    if report.exists():
        report.unlink()
    manifest = _common.read_manifest(root, DATASET)
    index = fiq.image_index(root)
    problems, warnings_, entries = [], [], {}
    all_asins: set[str] = set()
    n_entries = 0
    for split in splits:
        triplets, gallery_sizes, asins, ok = {}, {}, [], True
        for cat in fiq.CATEGORIES:
            try:
                ts, gallery = fiq.read_triplets(root, split, cat), fiq.read_image_split(root, split, cat)
            except (FileNotFoundError, ValueError) as e:
                problems.append(f"ERROR {split} {cat}: {e}")
                ok = False
                continue
            outside = fiq.not_in_gallery(ts, gallery)
            if outside:
                problems.append(f"NOT IN GALLERY {split} {cat}: {len(outside)} candidates / targets: "
                                f"{outside[:10]}{' ...' if len(outside) > 10 else ''}")
            triplets[cat], gallery_sizes[cat] = ts, len(gallery)
            asins += gallery + [a for t in ts for a in (t.candidate, t.target) if a is not None]
            n_entries += len(gallery)
            for what, observed, expected in (("triplets", len(ts), fiq.EXPECTED_TRIPLETS[split][cat]),
                                             ("images", len(gallery), fiq.EXPECTED_IMAGES[split][cat])):
                w = _common.compare_count(f"{split} {cat} {what}", observed, expected,
                                          source="counted from XiaoxiaoGuo/fashion-iq")
                warnings_ += [w] if w else []
        if not ok:
            continue
        unique = sorted(set(asins))
        all_asins.update(unique)
        n_triplets = sum(len(v) for v in triplets.values())
        print(f"{split}: {n_triplets:,} triplets {({c: len(v) for c, v in triplets.items()})}; gallery images "
              f"{gallery_sizes}; {len(unique):,} unique ASINs")
        missing = fiq.missing_images(root, unique, index)
        if missing:
            _common.report_missing(root, split, [root / "images" / a for a in missing], report)
            problems.append(f"MISSING {split}: {len(missing)} of {len(unique)} images (ASINs listed above; "
                            f"<ASIN>.png or .jpg)")
        ids = [f"{t.id}:{t.candidate}>{t.target}" for ts in triplets.values() for t in ts]
        if not args.update:
            problems += _common.check_ids(manifest, split, ids)
        entries[split] = dict(pairs=n_triplets, triplets={c: len(v) for c, v in triplets.items()},
                              images=gallery_sizes, asins=unique, ids=ids)
    if args.split == "all" and len(entries) == len(fiq.SPLITS):
        print(f"all splits: {len(all_asins):,} unique ASINs in {n_entries:,} split-file entries")
        for what, observed, expected in (("unique ASINs", len(all_asins), fiq.EXPECTED_UNIQUE_ASINS),
                                         ("split-file entries", n_entries, fiq.EXPECTED_SPLIT_ENTRIES)):
            w = _common.compare_count(what, observed, expected, source="counted from XiaoxiaoGuo/fashion-iq")
            warnings_ += [w] if w else []
    return _common.finish_verify(root, DATASET, entries, problems=problems, warnings_=warnings_, update=args.update)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python data_scripts/fashioniq.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the annotations (GitHub) and the images (Amazon URLs or a mirror)")
    d.add_argument("--root", type=Path, required=True, help="where captions/, image_splits/ and images/ will live")
    images = d.add_mutually_exclusive_group()
    images.add_argument("--archive", type=Path, default=None,
                        help="take the images from this mirror archive (zip / tar) instead of the Amazon URLs")
    images.add_argument("--skip-images", action="store_true", help="fetch the annotations only")
    d.set_defaults(func=cmd_download)
    v = sub.add_parser("verify", help="list missing images by ASIN, check counts, write / check the manifest")
    v.add_argument("--root", type=Path, required=True)
    v.add_argument("--split", choices=("all",) + fiq.SPLITS, default="all")
    v.add_argument("--update", action="store_true", help="rewrite the manifest's ids instead of comparing them")
    v.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
