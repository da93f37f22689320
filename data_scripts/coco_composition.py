"""COCO val2017 for Pic2Word's object composition benchmark: download, prepare the queries, verify.

    python data_scripts/coco_composition.py download --root DIR [--images-archive val2017.zip]
                                                     [--annotations-archive annotations_trainval2017.zip]
                                                     [--keep-archive]
    python data_scripts/coco_composition.py prepare  --root DIR [--seed 0] [--area-bounds 0.05 0.5]
                                                     [--pixel-lower-bound]
    python data_scripts/coco_composition.py verify   --root DIR [--update]

Sources (the COCO site publishes no checksum: the sha256 of each zip is recorded in DIR/idclab_manifest.json):

* ``http://images.cocodataset.org/zips/val2017.zip`` (about 1 GB [unverified]) -> DIR/val2017/<id:012d>.jpg
* ``http://images.cocodataset.org/annotations/annotations_trainval2017.zip`` (about 250 MB [unverified]) ->
  DIR/annotations/ (only ``instances_val2017.json`` is read)

Downloads are resumable (an interrupted run continues). Terms: COCO annotations CC BY 4.0 (COCO terms of use); each
image keeps its Flickr licence. Do not re-host.

``prepare`` runs :func:`idclab.data.coco_composition.prepare`: one seeded query object per annotated image, the
masked images DIR/val2017_masked/<id:012d>.png and DIR/coco_eval.csv, whose first line records the prep version,
seed and bounds. ``--pixel-lower-bound`` reproduces Pic2Word's lower bound in pixels (its bug) instead of a fraction.
``verify`` lists missing full and masked images, compares the image count with COCO's 5,000, prints the prep header,
and records the query ids in the manifest (later runs report changes). These steps were written without network
access and are tested on small trees of the same layout.
"""

from __future__ import annotations

import argparse
import shutil
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
    """Download (or take ``given``) one zip, extract it and move its ``folder`` into root."""
    name = url.rsplit("/", 1)[-1]
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"{given} does not exist.")
        archive = given
        info = dict(url=url, bytes=given.stat().st_size, sha256=_common.file_hash(given), checksum="not published")
        print(f"  checksum not published for {name}; recording its sha256 in the manifest", file=sys.stderr)
    else:
        archive = root / "_downloads" / name
        info = _common.download(url, archive)
    _common.record_download(root, DATASET, name, info)
    tmp = root / "_extract"
    if tmp.exists():  # an interrupted extraction: start it again
        shutil.rmtree(tmp)
    print(f"  extracting {archive} ...", file=sys.stderr)
    _common.extract(archive, tmp)
    found = sorted((p for p in tmp.rglob(folder) if p.is_dir()), key=lambda p: len(p.parts))
    if not found:
        raise SystemExit(f"{archive} has no {folder}/ folder: it is not COCO's {name}.")
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for child in sorted(found[0].iterdir()):  # merged: files already in target are kept, never overwritten
        if not (target / child.name).exists():
            shutil.move(str(child), str(target / child.name))
    shutil.rmtree(tmp)
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
                     pixel_lower_bound=args.pixel_lower_bound)
    header, rows = cc.read_csv(root)
    print(f"wrote {out} ({len(rows):,} queries; {header['no_candidate']} of {header['annotated_images']} annotated "
          f"images had no candidate object) and {root / cc.MASKED_DIR}/\n  {header['line']}")
    return 0


def cmd_verify(args) -> int:
    root: Path = args.root
    if not root.is_dir():
        print(f"ERROR: {root} does not exist. Download the data with\n  {cc.DOWNLOAD_COMMAND.format(root=root)}")
        return 1
    report = root / "verify_missing.txt"
    if report.exists():
        report.unlink()
    problems, warnings_, ids = [], [], None
    ann_path = root / cc.ANNOTATIONS
    if not ann_path.is_file():
        problems.append(f"MISSING {cc.ANNOTATIONS}: download it with\n  {cc.DOWNLOAD_COMMAND.format(root=root)}")
    else:
        images = read_json(ann_path)["images"]
        print(f"annotations: {len(images):,} val2017 images")
        w = _common.compare_count("val2017 images", len(images), cc.EXPECTED_VAL_IMAGES, source="the COCO site [2nd]")
        warnings_ += [w] if w else []
        missing = [root / cc.IMAGES_DIR / im["file_name"] for im in images
                   if not (root / cc.IMAGES_DIR / im["file_name"]).is_file()]
        if missing:
            _common.report_missing(root, "val2017", missing, report)
            problems.append(f"MISSING {len(missing)} of {len(images)} val2017 images (listed above)")
    if not (root / cc.CSV_NAME).is_file():
        problems.append(f"MISSING {cc.CSV_NAME}: prepare the queries with\n  {cc.PREPARE_COMMAND.format(root=root)}")
    else:
        try:
            header, rows = cc.read_csv(root)
        except ValueError as e:  # the message names the fix; reported as a problem below
            problems.append(f"ERROR {cc.CSV_NAME}: {e}")
        else:
            print(f"{cc.CSV_NAME}: {len(rows):,} queries\n  {header['line']}")
            masked = [root / cc.masked_name(r.id) for r in rows if not (root / cc.masked_name(r.id)).is_file()]
            if masked:
                _common.report_missing(root, "masked", masked, report)
                problems.append(f"MISSING {len(masked)} of {len(rows)} masked images (listed above); re-run\n  "
                                f"{cc.PREPARE_COMMAND.format(root=root)}")
            ids = [str(r.id) for r in rows]
    manifest = _common.read_manifest(root, DATASET)
    if ids is not None and not args.update:
        problems += _common.check_ids(manifest, "val2017", ids)
    for line in warnings_ + problems:
        print(line)
    if problems:
        print("FAILED (nothing was dropped or changed): download or prepare what is missing, then verify again; pass "
              "--update to accept query ids that changed on purpose.")
        return 1
    if args.update or "val2017" not in manifest["splits"]:
        manifest["splits"]["val2017"] = dict(queries=len(ids), prep=header["line"], ids=ids)
        _common.write_manifest(root, manifest)
    print(f"OK: {len(ids):,} queries; manifest {root / _common.MANIFEST}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python data_scripts/coco_composition.py",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch val2017.zip and the 2017 annotations (resumable), extract them")
    d.add_argument("--root", type=Path, required=True, help="Pic2Word's data/coco: val2017/ and annotations/ go here")
    d.add_argument("--images-archive", type=Path, default=None, help="use this already downloaded val2017.zip")
    d.add_argument("--annotations-archive", type=Path, default=None,
                   help="use this already downloaded annotations_trainval2017.zip")
    d.add_argument("--keep-archive", action="store_true", help="keep the downloaded zips after extraction")
    d.set_defaults(func=cmd_download)
    p = sub.add_parser("prepare", help="choose the query objects (seeded), write val2017_masked/ and coco_eval.csv")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--area-bounds", type=float, nargs=2, default=list(cc.AREA_BOUNDS), metavar=("LOW", "HIGH"),
                   help="box area as a fraction of the image (default 0.05 0.5)")
    p.add_argument("--pixel-lower-bound", action="store_true",
                   help="compare the lower bound in pixels, as Pic2Word's prepare_data.py does (its bug)")
    p.set_defaults(func=cmd_prepare)
    v = sub.add_parser("verify", help="list missing files, check counts, write / check the manifest")
    v.add_argument("--root", type=Path, required=True)
    v.add_argument("--update", action="store_true", help="rewrite the manifest's ids instead of comparing them")
    v.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
