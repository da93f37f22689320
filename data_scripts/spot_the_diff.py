"""Spot-the-Diff (Jhamtani & Berg-Kirkpatrick, EMNLP 2018): download, prepare the ground truth, verify.

    python data_scripts/spot_the_diff.py download --root DIR [--archive resized_images.zip] [--keep-archive]
    python data_scripts/spot_the_diff.py prepare  --root DIR [--split test] [--out FILE]
    python data_scripts/spot_the_diff.py verify   --root DIR [--split all|train|val|test] [--update]

Sources (none publishes a checksum; the sha256 of every downloaded file is recorded in DIR/idclab_manifest.json):

* annotations, from GitHub raw (branch ``master``)::

      https://raw.githubusercontent.com/harsh19/spot-the-diff/master/data/annotations/{train,val,test}.json
      -> DIR/annotations/{train,val,test}.json

* images: the repository's ``resized_images`` on Google Drive, file id 1OVb4_3Uec_xbyUk90aWC6LFpKsIOtR7v
  (``data/get_images.txt``), fetched with gdown when installed (otherwise: download it in a browser and pass it with
  ``--archive``). The archive's format (zip or tar) is detected from its content; every image in it is moved,
  flattened, into DIR/images (``<id>.png`` before, ``<id>_2.png`` after, ``<id>_diff.jpg`` kept).

Terms: no licence stated; frames from the VIRAT video dataset. Research use; cite; do not re-host.

``prepare`` writes the COCO-format ground truth of a split with repeated img_ids merged (each sentence a separate
reference): for test, the references of CLIP4IDC's ``gt/spot_total_change_captions_reformat.json`` under the same
ids (``<img_id>.png``, so CLIP4IDC's result files score against it directly), with each image entry once instead of
once per annotation entry. ``verify`` lists every missing image, prints entries / pairs / sentences per split, warns
where they differ from the counted figures (pairs 8,566 / 1,493 / 1,270), and records the ids in the manifest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common

from idclab.data import spot_the_diff as sd
from idclab.data._common import missing_files, pair_files, png_id

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
        url = _common.drive_urls(DRIVE_ID)[0]
        if args.archive is not None:
            archive = _common.given_archive(root, DATASET, args.archive, url=url, name="resized_images")
        else:
            archive = _common.gdrive_download(DRIVE_ID, root / "_downloads" / ARCHIVE_NAME,
                                              script="spot_the_diff.py", root=root)
            _common.given_archive(root, DATASET, archive, url=url, name="resized_images")
        with _common.unpacked(archive, root) as tree:
            n = _common.move_images(tree, images)
        print(f"  {n} images -> {images}", file=sys.stderr)
        if args.archive is None and not args.keep_archive:
            archive.unlink()
    print(f"Done. Next:\n  {sd.VERIFY_COMMAND.format(root=root)}")
    return 0


def cmd_prepare(args) -> int:
    root: Path = args.root
    gts, _ = sd.references(sd.read_split(root, args.split))
    out: Path = args.out or root / "gt" / f"spot_{args.split}_change_captions_reformat.json"
    description = f"Spot-the-Diff {args.split}: repeated img_ids merged, each sentence a reference"
    _common.write_prepared(out, gts, id_name="<img_id>.png", description=description)
    return 0


def cmd_verify(args) -> int:
    v = _common.Verify.start(args, DATASET, sd.DOWNLOAD_COMMAND, same_form=png_id)
    if v is None:
        return 1
    for split in v.splits(sd.SPLITS):
        raw = v.read(split, sd.read_entries, v.root, split)
        if raw is None:
            continue
        pairs = sd.merge_entries(v.root, raw)
        n_sent = sum(len(p.captions) for p in pairs)
        print(f"{split}: {len(raw):,} entries -> {len(pairs):,} pairs (repeated img_ids merged), {n_sent:,} sentences")
        for what, observed, expected in zip(("entries", "pairs", "sentences"), (len(raw), len(pairs), n_sent),
                                            sd.EXPECTED[split]):
            v.count(f"{split} {what}", observed, expected, source="counted from the released files")
        empty = [p.id for p in pairs if not p.captions]
        if empty:
            v.problem(f"EMPTY {split}: {len(empty)} pairs without sentences: {empty[:20]}")
        v.missing(split, missing_files(pair_files(pairs)), 2 * len(pairs))
        v.record(split, dict(entries=len(raw), pairs=len(pairs), sentences=n_sent, ids=[p.id for p in pairs]))
    return v.finish()


def build_parser():
    parser, sub = _common.script_parser("spot_the_diff.py", __doc__)
    _common.add_download(sub, cmd_download, help="fetch the annotations (GitHub) and resized images (Google Drive)",
                         root_help="where annotations/ and images/ will live",
                         archive_help="use this already downloaded resized_images archive")
    _common.add_prepare(sub, cmd_prepare, sd.SPLITS,
                        out_help="default: ROOT/gt/spot_<split>_change_captions_reformat.json")
    _common.add_verify(sub, cmd_verify, sd.SPLITS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
