"""Spot-the-Diff (Jhamtani & Berg-Kirkpatrick, EMNLP 2018): download, prepare the ground truth, verify.

    python data_scripts/spot_the_diff.py download --root DIR [--archive resized_images.zip] [--keep-archive]
    python data_scripts/spot_the_diff.py prepare  --root DIR [--split test] [--out FILE]
    python data_scripts/spot_the_diff.py verify   --root DIR [--split all|train|val|test] [--update]

Sources (none publishes a checksum; the sha256 of every downloaded file is recorded in DIR/idclab_manifest.json):

* annotations, from GitHub raw (branch name ``master`` unverified offline)::

      https://raw.githubusercontent.com/harsh19/spot-the-diff/master/data/annotations/{train,val,test}.json
      -> DIR/annotations/{train,val,test}.json

* images: the repository's ``resized_images`` on Google Drive, file id 1OVb4_3Uec_xbyUk90aWC6LFpKsIOtR7v
  (``data/get_images.txt``), fetched with gdown when installed (otherwise: download it in a browser and pass it with
  ``--archive``). The archive's format (zip or tar) is detected from its content [unverified offline]; every image
  in it is moved, flattened, into DIR/images (``<id>.png`` before, ``<id>_2.png`` after, ``<id>_diff.jpg`` kept).

Terms: no licence stated; frames from the VIRAT video dataset. Research use; cite; do not re-host.

``prepare`` writes the COCO-format ground truth of a split with repeated img_ids merged (each sentence a separate
reference): equivalent to CLIP4IDC's ``gt/spot_total_change_captions_reformat.json`` for test, with unique image
entries. ``verify`` lists every missing image, prints entries / pairs / sentences per split, warns where they differ
from the counted figures (pairs 8,566 / 1,493 / 1,270), and records the ids in the manifest.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import _common

from idclab.data import spot_the_diff as sd

DATASET = "spot_the_diff"
DRIVE_ID = "1OVb4_3Uec_xbyUk90aWC6LFpKsIOtR7v"
ANNOTATION_URL = "https://raw.githubusercontent.com/harsh19/spot-the-diff/master/data/annotations/{split}.json"
ARCHIVE_NAME = "spot_resized_images.archive"  # zip or tar: detected from the content
TERMS = dict(
    paper="Jhamtani, Berg-Kirkpatrick. Learning to Describe Differences Between Pairs of Similar Images. EMNLP 2018.",
    sources=["annotations: " + ANNOTATION_URL.format(split="{train,val,test}"),
             f"images: Google Drive {DRIVE_ID} (resized_images, from github.com/harsh19/spot-the-diff "
             f"data/get_images.txt)"],
    terms="no licence stated by the authors; frames from the VIRAT video dataset. Research use; cite the paper; "
          "do not re-host.",
)


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("Spot-the-Diff", **TERMS)
    for split in sd.SPLITS:
        info = _common.download(ANNOTATION_URL.format(split=split), root / "annotations" / f"{split}.json")
        _common.record_download(root, DATASET, f"annotations/{split}.json", info)
    images = root / "images"
    if images.is_dir() and any(images.glob("*_2.png")):
        print(f"{images} already holds images; not downloading them again.", file=sys.stderr)
    else:
        if args.archive is not None:
            archive = args.archive
            if not archive.is_file():
                raise SystemExit(f"--archive {archive} does not exist.")
        else:
            archive = _common.gdrive_download(DRIVE_ID, root / "_downloads" / ARCHIVE_NAME,
                                              script="spot_the_diff.py", root=root)
        print("  checksum not published for the images archive; recording its sha256 in the manifest",
              file=sys.stderr)
        _common.record_download(root, DATASET, "resized_images", dict(
            url=_common.drive_urls(DRIVE_ID)[0], bytes=archive.stat().st_size, sha256=_common.file_hash(archive),
            checksum="not published"))
        tmp = root / "_extract"
        if tmp.exists():
            shutil.rmtree(tmp)
        print(f"  extracting {archive} ...", file=sys.stderr)
        _common.extract(archive, tmp)
        n = _common.move_images(tmp, images)
        shutil.rmtree(tmp)
        print(f"  {n} images -> {images}", file=sys.stderr)
        if args.archive is None and not args.keep_archive:
            archive.unlink()
    print(f"Done. Next:\n  python data_scripts/spot_the_diff.py verify --root {root}")
    return 0


def cmd_prepare(args) -> int:
    root: Path = args.root
    gts, _ = sd.references(sd.read_split(root, args.split))
    out: Path = args.out or root / "gt" / f"spot_{args.split}_change_captions_reformat.json"
    description = f"Spot-the-Diff {args.split}: repeated img_ids merged, each sentence a reference"
    _common.write_prepared(out, gts, id_name="img_id", description=description)
    return 0


def cmd_verify(args) -> int:
    root: Path = args.root
    if not root.is_dir():
        print(f"ERROR: {root} does not exist. Download the data with\n  {sd.DOWNLOAD_COMMAND.format(root=root)}")
        return 1
    splits = list(sd.SPLITS) if args.split == "all" else [args.split]
    report = root / "verify_missing.txt"
    if report.exists():
        report.unlink()
    manifest = _common.read_manifest(root, DATASET)
    problems, warnings_, entries = [], [], {}
    for split in splits:
        try:
            raw = sd.read_entries(root, split)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"ERROR {split}: {e}")
            continue
        pairs = sd.merge_entries(root, raw)
        n_sent = sum(len(p.captions) for p in pairs)
        print(f"{split}: {len(raw):,} entries -> {len(pairs):,} pairs (repeated img_ids merged), {n_sent:,} sentences")
        for what, observed, expected in zip(("entries", "pairs", "sentences"), (len(raw), len(pairs), n_sent),
                                            sd.EXPECTED[split]):
            w = _common.compare_count(f"{split} {what}", observed, expected, source="counted from the released files")
            warnings_ += [w] if w else []
        empty = [p.id for p in pairs if not p.captions]
        if empty:
            problems.append(f"EMPTY {split}: {len(empty)} pairs without sentences: {empty[:20]}")
        missing = sd.missing_files(pairs)
        if missing:
            _common.report_missing(root, split, missing, report)
            problems.append(f"MISSING {split}: {len(missing)} of {2 * len(pairs)} image files (listed above)")
        ids = [p.id for p in pairs]
        if not args.update:
            problems += _common.check_ids(manifest, split, ids)
        entries[split] = dict(entries=len(raw), pairs=len(pairs), sentences=n_sent, ids=ids)
    return _common.finish_verify(root, DATASET, entries, problems=problems, warnings_=warnings_, update=args.update)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python data_scripts/spot_the_diff.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the annotations (GitHub) and resized images (Google Drive)")
    d.add_argument("--root", type=Path, required=True, help="where annotations/ and images/ will live")
    d.add_argument("--archive", type=Path, default=None, help="use this already downloaded resized_images archive")
    d.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after extraction")
    d.set_defaults(func=cmd_download)
    p = sub.add_parser("prepare", help="write the COCO-format evaluation ground truth of a split")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--split", choices=sd.SPLITS, default="test")
    p.add_argument("--out", type=Path, default=None, help="default: ROOT/gt/spot_<split>_change_captions_reformat.json")
    p.set_defaults(func=cmd_prepare)
    v = sub.add_parser("verify", help="list missing files, check counts, write / check the manifest")
    v.add_argument("--root", type=Path, required=True)
    v.add_argument("--split", choices=("all",) + sd.SPLITS, default="all")
    v.add_argument("--update", action="store_true", help="rewrite the manifest's ids instead of comparing them")
    v.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
