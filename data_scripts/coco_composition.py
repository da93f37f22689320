"""COCO val2017 for Pic2Word's object composition benchmark: download, prepare the queries, verify.

    python data_scripts/coco_composition.py download --root DIR [--images-archive val2017.zip]
                                                     [--annotations-archive annotations_trainval2017.zip]
                                                     [--keep-archive]
    python data_scripts/coco_composition.py prepare  --root DIR [--seed 0] [--area-bounds 0.05 0.5]
                                                     [--pixel-lower-bound]
    python data_scripts/coco_composition.py verify   --root DIR [--update]

Sources (the COCO site publishes no checksum: the sha256 of each zip is recorded in DIR/idclab_manifest.json):

* ``http://images.cocodataset.org/zips/val2017.zip`` (about 1 GB) -> DIR/val2017/<id:012d>.jpg
* ``http://images.cocodataset.org/annotations/annotations_trainval2017.zip`` (about 250 MB) ->
  DIR/annotations/ (only ``instances_val2017.json`` is read)

Downloads are resumable (an interrupted run continues). Terms: COCO annotations CC BY 4.0 (COCO terms of use); each
image keeps its Flickr licence. Do not re-host.

``prepare`` runs :func:`idclab.data.coco_composition.prepare`: one seeded query object per annotated image, the
masked images DIR/val2017_masked/<id:012d>.png and DIR/coco_eval.csv, whose first line records the prep version,
seed and bounds. ``--pixel-lower-bound`` reproduces Pic2Word's lower bound in pixels (its bug) instead of a fraction.
``verify`` lists missing full and masked images, compares the image count with COCO's 5,000, prints the prep header,
and records the query ids in the manifest (later runs report changes). These steps are tested on small trees of the
same layout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common

from idclab.data import coco_composition as cc
from idclab.data._common import read_json

DATASET = "coco_composition"
IMAGES_URL = "http://images.cocodataset.org/zips/val2017.zip"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
TERMS = dict(
    paper="Lin et al. Microsoft COCO: Common Objects in Context. ECCV 2014; the composition protocol of Saito et al., "
          "Pic2Word, CVPR 2023.",
    sources=[IMAGES_URL, ANNOTATIONS_URL],
    terms="annotations CC BY 4.0 (COCO terms of use); images under their Flickr licences. Do not re-host.",
)


def _fetch(root: Path, url: str, folder: str, given: Path | None, keep: bool) -> None:
    """Download (or take ``given``) one zip, extract it and merge its ``folder`` into root."""
    name = url.rsplit("/", 1)[-1]
    if given is not None:
        archive = _common.given_archive(root, DATASET, given, url=url, name=name)
    else:
        archive = root / "_downloads" / name
        _common.record_download(root, DATASET, name, _common.download(url, archive))
    with _common.unpacked(archive, root) as tree:
        _common.merge_folder(_common.find_folder(tree, folder, archive, f"COCO's {name}"), root / folder)
    if given is None and not keep:
        archive.unlink()


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("COCO val2017 (object composition)", **TERMS)
    if (root / cc.ANNOTATIONS).is_file():
        print(f"{root / cc.ANNOTATIONS} is present; not downloading the annotations again.", file=sys.stderr)
    else:
        _fetch(root, ANNOTATIONS_URL, "annotations", args.annotations_archive, args.keep_archive)
    images = root / cc.IMAGES_DIR
    if images.is_dir() and any(images.glob("*.jpg")):
        print(f"{images} already holds images; not downloading them again (verify lists any missing).",
              file=sys.stderr)
    else:
        _fetch(root, IMAGES_URL, cc.IMAGES_DIR, args.images_archive, args.keep_archive)
    print(f"Done. Next:\n  {cc.PREPARE_COMMAND.format(root=root)}\n  {cc.VERIFY_COMMAND.format(root=root)}")
    return 0


def cmd_prepare(args) -> int:
    root: Path = args.root
    out = cc.prepare(root, seed=args.seed, area_bounds=tuple(args.area_bounds),
                     pixel_lower_bound=args.pixel_lower_bound, class_order=args.class_order)
    header, rows = cc.read_csv(root)
    print(f"wrote {out} ({len(rows):,} queries; {header['no_candidate']} of {header['annotated_images']} annotated "
          f"images had no candidate object) and {root / cc.MASKED_DIR}/\n  {header['line']}")
    return 0


def cmd_verify(args) -> int:
    v = _common.Verify.start(args, DATASET, cc.DOWNLOAD_COMMAND)
    if v is None:
        return 1
    root = v.root
    ann_path = root / cc.ANNOTATIONS
    if not ann_path.is_file():
        v.problem(f"MISSING {cc.ANNOTATIONS}: download it with\n  {cc.DOWNLOAD_COMMAND.format(root=root)}")
    else:
        images = read_json(ann_path)["images"]
        print(f"annotations: {len(images):,} val2017 images")
        v.count("val2017 images", len(images), cc.EXPECTED_VAL_IMAGES, source="the COCO site")
        v.missing("val2017", [root / cc.IMAGES_DIR / im["file_name"] for im in images
                              if not (root / cc.IMAGES_DIR / im["file_name"]).is_file()], len(images), "images")
    if not (root / cc.CSV_NAME).is_file():
        v.problem(f"MISSING {cc.CSV_NAME}: prepare the queries with\n  {cc.PREPARE_COMMAND.format(root=root)}")
        return v.finish()
    read = v.read(cc.CSV_NAME, cc.read_csv, root)
    if read is None:
        return v.finish()
    header, rows = read
    print(f"{cc.CSV_NAME}: {len(rows):,} queries\n  {header['line']}")
    masked = [root / cc.masked_name(r.id) for r in rows if not (root / cc.masked_name(r.id)).is_file()]
    v.missing("masked", masked, len(rows), f"masked images (write them with {cc.PREPARE_COMMAND.format(root=root)})")
    v.record("val2017", dict(queries=len(rows), prep=header["line"], ids=[str(r.id) for r in rows]))
    return v.finish(ok=f"{len(rows):,} queries")


def build_parser():
    parser, sub = _common.script_parser("coco_composition.py", __doc__)
    d = _common.add_download(sub, cmd_download, help="fetch val2017.zip and the 2017 annotations (resumable), "
                                                     "extract them",
                             root_help="Pic2Word's data/coco: val2017/ and annotations/ go here")
    d.add_argument("--images-archive", type=Path, default=None, help="use this already downloaded val2017.zip")
    d.add_argument("--annotations-archive", type=Path, default=None,
                   help="use this already downloaded annotations_trainval2017.zip")
    p = sub.add_parser("prepare", help="choose the query objects (seeded), write val2017_masked/ and coco_eval.csv")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--area-bounds", type=float, nargs=2, default=list(cc.AREA_BOUNDS), metavar=("LOW", "HIGH"),
                   help="box area as a fraction of the image (default 0.05 0.5)")
    p.add_argument("--pixel-lower-bound", action="store_true",
                   help="compare the lower bound in pixels, as Pic2Word's prepare_data.py does (its bug)")
    p.add_argument("--class-order", choices=cc.CLASS_ORDERS, default="annotation",
                   help="order of the other classes in the query text: as first annotated (Pic2Word's, default) "
                        "or sorted")
    p.set_defaults(func=cmd_prepare)
    _common.add_verify(sub, cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
