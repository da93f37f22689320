"""Image-Editing-Request (Tan et al., ACL 2019): download, prepare the ground truth, verify.

    python data_scripts/image_editing_request.py download --root DIR [--archive IMAGES.zip]
    python data_scripts/image_editing_request.py prepare  --root DIR [--split test] [--out FILE]
    python data_scripts/image_editing_request.py verify   --root DIR [--split all|train|val|test] [--update]

CLIP4IDC's repository has no IER support at all (no loader, ground truth or script); this script and
``idclab.data.image_editing_request`` are idclab's own.

Sources (the steps are tested on small trees of the same layout):

* annotations, from GitHub raw (the README says ``data/``; the files live in ``dataset/adobe/``; branch
  ``master``)::

      https://raw.githubusercontent.com/airsplay/VisualRelationships/master/dataset/adobe/{train,valid,test}.json
      -> DIR/annotations/{train,valid,test}.json      (our split "val" reads valid.json)

  No checksum is published; their sha256 is recorded in DIR/idclab_manifest.json.

* images, from the archive.org mirror ``image-editing-dataset`` (the durable copy of the authors' Google Drive
  folder 1p_hkPwRUiLl1RHV3DkzQk3ti-GzHzT7O): the file list comes from archive.org's metadata API::

      https://archive.org/metadata/image-editing-dataset          -> {"files": [{"name", "size", "sha1", "md5"}, ...]}
      https://archive.org/download/image-editing-dataset/<name>   each image or archive file of the item

  archive.org publishes a sha1 (and md5) per file: each download is checked against it and resumes with HTTP Range.
  Loose images are saved into DIR/images; archives (zip / tar) are kept in DIR/_downloads/ and extracted, every
  image found moved, flattened, into DIR/images. To use the Google Drive folder instead, download it in a browser
  (Drive zips a folder) and pass the zip with ``--archive``.

Terms: no licence stated; the images are Reddit users' photos and their edits. Research use; cite; do not re-host.

``prepare`` writes the COCO-format ground truth of a split ({uid: sents}; 3 references per val / test pair).
``verify`` lists every missing image, prints pairs / sentences per split, warns where they differ from the counted
figures (3,061 / 383 / 495 pairs; 3,061 / 1,149 / 1,485 sentences), and records the uids in the manifest.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

import _common

from idclab.data import image_editing_request as ier
from idclab.data._common import missing_files, pair_files

DATASET = "image_editing_request"
ANNOTATION_URL = "https://raw.githubusercontent.com/airsplay/VisualRelationships/master/dataset/adobe/{name}"
ARCHIVE_ORG_ITEM = "image-editing-dataset"
METADATA_URL = f"https://archive.org/metadata/{ARCHIVE_ORG_ITEM}"
FILE_URL = f"https://archive.org/download/{ARCHIVE_ORG_ITEM}/{{name}}"
DRIVE_FOLDER = "https://drive.google.com/drive/folders/1p_hkPwRUiLl1RHV3DkzQk3ti-GzHzT7O"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")
TERMS = dict(
    paper="Tan, Dernoncourt, Lin, Bui, Bansal. Expressing Visual Relationships via Language. ACL 2019.",
    sources=["annotations: " + ANNOTATION_URL.format(name="{train,valid,test}.json"),
             f"images: https://archive.org/details/{ARCHIVE_ORG_ITEM} (mirror of {DRIVE_FOLDER})"],
    terms="no licence stated by the authors; images are Reddit users' photos and edits. Research use; cite the "
          "paper; do not re-host.",
)


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("Image-Editing-Request", **TERMS)
    for split in ier.SPLITS:
        name = ier.SPLIT_FILES[split]
        info = _common.download(ANNOTATION_URL.format(name=name), root / "annotations" / name)
        _common.record_download(root, DATASET, f"annotations/{name}", info)
    images = root / "images"
    staging = root / "_downloads" / ARCHIVE_ORG_ITEM
    archives: list[Path] = []
    if args.archive is not None:
        archives.append(_common.given_archive(root, DATASET, args.archive, url=DRIVE_FOLDER,
                                              name=f"images:{args.archive.name}"))
    else:
        files = archive_org_files(_common.read_url_json(METADATA_URL))
        print(f"  {len(files)} files to fetch from archive.org (checked against its sha1)", file=sys.stderr)
        infos = {}
        try:
            for f in files:
                checksum = ("sha1", f["sha1"]) if f.get("sha1") else ("md5", f["md5"]) if f.get("md5") else None
                is_archive = f["name"].lower().endswith(ARCHIVE_SUFFIXES)
                # loose images go straight to images/ (a re-run finds them there); archives are kept in staging
                dest = staging / f["name"] if is_archive else images / Path(f["name"]).name
                infos[f"archive.org:{f['name']}"] = _common.download(
                    FILE_URL.format(name=urllib.parse.quote(f["name"])), dest, checksum=checksum,
                    size=int(f["size"]) if f.get("size") else None, quiet=not is_archive)
                if is_archive:
                    archives.append(dest)
        finally:  # one manifest write for all files, also when interrupted
            manifest = _common.read_manifest(root, DATASET)
            manifest["downloads"].update(infos)
            _common.write_manifest(root, manifest)
    for archive in archives:
        with _common.unpacked(archive, root) as tree:
            _common.move_images(tree, images)
    n = sum(1 for _ in images.iterdir()) if images.is_dir() else 0
    print(f"Done: {n} files in {images}. Next:\n  python data_scripts/image_editing_request.py verify --root {root}")
    return 0


def archive_org_files(metadata: dict) -> list[dict]:
    """The files of the archive.org item worth fetching: images and archives, not archive.org's own extras."""
    out = []
    for f in metadata.get("files", []):
        name = f.get("name", "")
        lower = name.lower()
        if (name.startswith("__ia_thumb") or lower.endswith(("_meta.xml", "_files.xml", "_meta.sqlite", ".torrent",
                                                              "_reviews.xml"))
                or f.get("source") == "derivative"):
            continue
        if lower.endswith(ARCHIVE_SUFFIXES) or lower.endswith(_common.IMAGE_SUFFIXES):
            out.append(f)
        else:
            print(f"  skipping {name} (neither an image nor an archive)", file=sys.stderr)
    if not out:
        raise RuntimeError(f"{METADATA_URL} lists no image or archive files. Download the images from {DRIVE_FOLDER} "
                           f"in a browser and pass the zip with --archive.")
    return out


def cmd_prepare(args) -> int:
    root: Path = args.root
    gts, _ = ier.references(ier.read_split(root, args.split))
    out: Path = args.out or root / "gt" / f"ier_{args.split}_change_captions_reformat.json"
    description = f"Image-Editing-Request {args.split} ({ier.SPLIT_FILES[args.split]}): uid -> requests"
    _common.write_prepared(out, gts, id_name="uid", description=description)
    return 0


def cmd_verify(args) -> int:
    v = _common.Verify.start(args, DATASET, ier.DOWNLOAD_COMMAND)
    if v is None:
        return 1
    for split in v.splits(ier.SPLITS):
        pairs = v.read(split, ier.read_split, v.root, split)
        if pairs is None:
            continue
        n_sent = sum(len(p.captions) for p in pairs)
        print(f"{split} ({ier.SPLIT_FILES[split]}): {len(pairs):,} pairs, {n_sent:,} sentences")
        for what, observed, expected in zip(("pairs", "sentences"), (len(pairs), n_sent), ier.EXPECTED[split]):
            v.count(f"{split} {what}", observed, expected, source="counted from the released files")
        files = list(dict.fromkeys(pair_files(pairs)))  # two uids can share their photos
        v.missing(split, missing_files(files), len(files))
        v.record(split, dict(pairs=len(pairs), sentences=n_sent, ids=[p.id for p in pairs]))
    return v.finish()


def build_parser():
    parser, sub = _common.script_parser("image_editing_request.py", __doc__)
    _common.add_download(sub, cmd_download, help="fetch the annotations (GitHub) and the images (archive.org mirror)",
                         root_help="where annotations/ and images/ will live", keep_archive=False,
                         archive_help="use this zip of the images (e.g. the Google Drive folder) instead of "
                                      "archive.org")
    _common.add_prepare(sub, cmd_prepare, ier.SPLITS,
                        out_help="default: ROOT/gt/ier_<split>_change_captions_reformat.json")
    _common.add_verify(sub, cmd_verify, ier.SPLITS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
