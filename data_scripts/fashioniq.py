"""FashionIQ (Wu et al., CVPR 2021): download what can be scripted, verify.

    python data_scripts/fashioniq.py download --root DIR [--archive MIRROR.zip | --skip-images]
    python data_scripts/fashioniq.py verify   --root DIR [--split all|train|val|test] [--update]

Sources (branch ``master`` of both repositories; the steps are tested on small trees of the same layout):

* annotations, from GitHub raw (``XiaoxiaoGuo/fashion-iq``; CDLA licence)::

      https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master/captions/cap.{cat}.{split}.json
      https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master/image_splits/split.{cat}.{split}.json
      -> DIR/captions/..., DIR/image_splits/...

* images, from the Amazon URLs of ``hongwang600/fashion-iq-metadata``::

      https://raw.githubusercontent.com/hongwang600/fashion-iq-metadata/master/image_url/asin2url.{cat}.txt
      (lines "ASIN <tab> URL") -> each image to DIR/images/<ASIN>.jpg

  **Many of these URLs are dead** (fashion-iq issues #8, #13; SEARLE #11), and some answer with an empty (0-byte)
  file or something that is not an image: every such image is deleted again, listed in DIR/download_failed.txt with
  the reason, and the command exits with status 1 (a later ``verify`` lists it as missing). That repository's
  ``broken_links/`` folder holds 13 of the dead images. Community copies exist (reshares linked from
  XiaoxiaoGuo/fashion-iq issue #18, a Kaggle copy "fashioniq-bit", the Hugging Face dataset
  ``Plachta/FashionIQ``), but none is known to be complete: users report mirrors with missing images. Download one
  by hand, pass its archive with ``--archive`` (every image in it is moved, flattened, into DIR/images), then let
  ``verify`` list what is still missing. A re-run fetches only the images not yet there.

No checksums are published; the annotation files' sha256 are recorded in DIR/idclab_manifest.json.
Terms: annotations CDLA (variant not stated); images are Amazon product photos (Amazon copyright). Research use;
cite; do not re-host.

``verify`` reads every split and category, lists every missing image by ASIN (never drops a triplet) in
DIR/verify_missing.txt, checks that each candidate / target is in its category's gallery, prints the counts against
the published ones (val triplets 2,017 / 2,038 / 1,961, test triplets 2,024 / 2,038 / 2,056; val images
3,817 / 6,346 / 5,373; 74,381 unique ASINs over all splits, 77,683 split-file entries) and records the triplets and
ASINs per split in the manifest.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

import _common

from idclab.data import fashioniq as fiq
from idclab.data import image_folder
from idclab.data._common import listing

DATASET = "fashioniq"
REPO_URL = "https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master/{path}"
URL_LIST_URL = "https://raw.githubusercontent.com/hongwang600/fashion-iq-metadata/master/image_url/asin2url.{cat}.txt"
FAILED_REPORT = "download_failed.txt"
TERMS = dict(
    paper="Wu, Gao, Guo, Al-Halah, Rennie, Grauman, Feris. Fashion IQ: A New Dataset Towards Retrieving Images by "
          "Natural Language Feedback. CVPR 2021.",
    sources=["annotations: " + REPO_URL.format(path="{captions,image_splits}/..."),
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
    _common.given_archive(root, DATASET, archive, url="a mirror (given with --archive)", name=f"images:{archive.name}")
    with _common.unpacked(archive, root) as tree:
        moved = _common.move_images(tree, root / "images")
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
        if dest.exists():  # not in the index, so an empty file from an earlier run: fetch it again
            dest.unlink()
        try:
            _common.download(url, dest, quiet=True)
        except RuntimeError as e:  # a dead URL: listed below and in the report, the others go on
            failed.append((asin, url, str(e).split(". ")[0]))
            continue
        why = "an empty file" if dest.stat().st_size == 0 else (
            "not a readable image" if image_folder.check_readable([dest]) else None)
        if why is not None:  # answered, but not with an image: as missing as a dead URL
            dest.unlink()
            failed.append((asin, url, f"{url} answered with {why}"))
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
    v = _common.Verify.start(args, DATASET, fiq.DOWNLOAD_COMMAND)
    if v is None:
        return 1
    root = v.root
    index = fiq.image_index(root)
    all_asins: set[str] = set()
    n_entries = 0
    source = "counted from XiaoxiaoGuo/fashion-iq"
    for split in v.splits(fiq.SPLITS):
        triplets, gallery_sizes, asins = {}, {}, []
        for cat in fiq.CATEGORIES:
            read = v.read(f"{split} {cat}", lambda: (fiq.read_triplets(root, split, cat),
                                                     fiq.read_image_split(root, split, cat)))
            if read is None:
                continue
            ts, gallery = read
            outside = fiq.not_in_gallery(ts, gallery)
            if outside:
                v.problem(f"NOT IN GALLERY {split} {cat}: {len(outside)} candidates / targets: "
                          f"{outside[:10]}{' ...' if len(outside) > 10 else ''}")
            triplets[cat], gallery_sizes[cat] = ts, len(gallery)
            asins += gallery + [a for t in ts for a in (t.candidate, t.target) if a is not None]
            n_entries += len(gallery)
            v.count(f"{split} {cat} triplets", len(ts), fiq.EXPECTED_TRIPLETS[split][cat], source=source)
            v.count(f"{split} {cat} images", len(gallery), fiq.EXPECTED_IMAGES[split][cat], source=source)
        if len(triplets) < len(fiq.CATEGORIES):  # an unreadable category (an ERROR above)
            continue
        unique = sorted(set(asins))
        all_asins.update(unique)
        n_triplets = sum(len(t) for t in triplets.values())
        print(f"{split}: {n_triplets:,} triplets {({c: len(t) for c, t in triplets.items()})}; gallery images "
              f"{gallery_sizes}; {len(unique):,} unique ASINs")
        missing = fiq.missing_images(root, unique, index)
        v.missing(split, [root / "images" / a for a in missing], len(unique), "images (ASINs listed above; "
                  "<ASIN>.png or .jpg)")
        v.record(split, dict(pairs=n_triplets, triplets={c: len(t) for c, t in triplets.items()},
                             images=gallery_sizes, asins=unique,
                             ids=[f"{t.id}:{t.candidate}>{t.target}" for ts in triplets.values() for t in ts]))
    if args.split == "all" and len(v.entries) == len(fiq.SPLITS):
        print(f"all splits: {len(all_asins):,} unique ASINs in {n_entries:,} split-file entries")
        v.count("unique ASINs", len(all_asins), fiq.EXPECTED_UNIQUE_ASINS, source=source)
        v.count("split-file entries", n_entries, fiq.EXPECTED_SPLIT_ENTRIES, source=source)
    return v.finish()


def build_parser():
    parser, sub = _common.script_parser("fashioniq.py", __doc__)
    d = _common.add_download(sub, cmd_download, keep_archive=False,
                             help="fetch the annotations (GitHub) and the images (Amazon URLs or a mirror)",
                             root_help="where captions/, image_splits/ and images/ will live")
    images = d.add_mutually_exclusive_group()
    images.add_argument("--archive", type=Path, default=None,
                        help="take the images from this mirror archive (zip / tar) instead of the Amazon URLs")
    images.add_argument("--skip-images", action="store_true", help="fetch the annotations only")
    _common.add_verify(sub, cmd_verify, fiq.SPLITS,
                       help="list missing images by ASIN, check counts, write / check the manifest")
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
