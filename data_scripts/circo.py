"""CIRCO (Baldrati et al., ICCV 2023): download the annotations and COCO's unlabeled2017 gallery, verify.

    python data_scripts/circo.py download --root DIR [--archive unlabeled2017.zip] [--skip-images] [--keep-archive]
    python data_scripts/circo.py verify   --root DIR [--split all|val|test] [--update]

DIR is the ``CIRCO`` folder. Sources (branch ``main`` of the CIRCO repository; the steps are tested on small trees
of the same layout)::

    https://raw.githubusercontent.com/miccunifi/CIRCO/main/annotations/{val,test}.json   -> DIR/annotations/
    http://images.cocodataset.org/annotations/image_info_unlabeled2017.zip
        -> DIR/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
    http://images.cocodataset.org/zips/unlabeled2017.zip   (about 19 GB)
        -> DIR/COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg

Downloads resume with HTTP Range after an interruption. No checksums are published: the sha256 of each download is
recorded in DIR/idclab_manifest.json. ``--archive`` uses an unlabeled2017.zip downloaded by hand; ``--skip-images``
fetches the annotations and the image list only. The zips are deleted after extraction unless ``--keep-archive``.
Terms: CIRCO's annotations CC BY-NC 4.0; COCO images carry their Flickr licences (COCO's annotations CC BY 4.0
[unverified]). Research use; cite; do not re-host.

``verify`` lists every missing gallery image by COCO id (never drops one) in DIR/verify_missing.txt, checks that
every reference and ground truth is in the gallery and that each val target_img_id is its first gt_img_ids entry,
prints counts against the published ones (220 val / 800 test queries; 4.16 ground truths per val query; the gallery
is "about 123k" images, not compared) and records the query ids in the manifest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common

from idclab.data import circo

DATASET = "circo"
ANNOTATION_URL = "https://raw.githubusercontent.com/miccunifi/CIRCO/main/annotations/{split}.json"
IMAGE_INFO_URL = "http://images.cocodataset.org/annotations/image_info_unlabeled2017.zip"
IMAGES_URL = "http://images.cocodataset.org/zips/unlabeled2017.zip"
TERMS = dict(
    paper="Baldrati, Agnolucci, Bertini, Del Bimbo. Zero-Shot Composed Image Retrieval with Textual Inversion. "
          "ICCV 2023.",
    sources=["annotations: " + ANNOTATION_URL.format(split="{val,test}"),
             f"gallery: {IMAGES_URL} and {IMAGE_INFO_URL} (COCO 2017 unlabeled)"],
    terms="CIRCO annotations CC BY-NC 4.0; COCO images under their Flickr licences. Research use; cite the paper; "
          "do not re-host.",
)


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("CIRCO", **TERMS)
    for split in circo.SPLITS:
        info = _common.download(ANNOTATION_URL.format(split=split), root / "annotations" / f"{split}.json",
                                quiet=True)
        _common.record_download(root, DATASET, f"annotations/{split}.json", info)
    info_path = root / circo.IMAGE_INFO
    if not info_path.is_file():
        archive = _fetch(root, IMAGE_INFO_URL)
        _extract_into(root, archive, keep=lambda name: name == info_path.name, dest=info_path.parent,
                      what=info_path.name, keep_archive=args.keep_archive)
    if args.skip_images:
        print(f"Images skipped. Next:\n  python data_scripts/circo.py download --root {root}   (for the gallery)")
        return 0
    files = circo.read_image_info(root)
    if not circo.missing_images(root, files):
        print(f"{root / circo.IMAGE_DIR} already holds all {len(files):,} images; check them with\n"
              f"  python data_scripts/circo.py verify --root {root}")
        return 0
    if args.archive is not None:
        archive = _common.given_archive(root, DATASET, args.archive, url=IMAGES_URL)
    else:
        archive = _fetch(root, IMAGES_URL)
    _extract_into(root, archive, keep=lambda name: name.lower().endswith(".jpg"), dest=root / circo.IMAGE_DIR,
                  what="the unlabeled2017 images", keep_archive=args.keep_archive or args.archive is not None)
    print(f"Done. Next:\n  python data_scripts/circo.py verify --root {root}")
    return 0


def _fetch(root: Path, url: str) -> Path:
    name = url.rsplit("/", 1)[1]
    dest = root / "_downloads" / name
    _common.record_download(root, DATASET, name, _common.download(url, dest))
    return dest


def _extract_into(root: Path, archive: Path, *, keep, dest: Path, what: str, keep_archive: bool) -> None:
    """Extract ``archive`` and move the files ``keep`` accepts (by name), flattened, into ``dest``."""
    with _common.unpacked(archive, root) as tree:
        if not any(p.is_file() and keep(p.name) and not p.name.startswith("._") for p in tree.rglob("*")):
            raise RuntimeError(f"{archive} holds no {what}: it is not the expected COCO archive. Delete it and "
                               f"re-run.")
        _common.move_images(tree, dest, keep=keep, suffixes=None)
    if not keep_archive:
        archive.unlink()


def cmd_verify(args) -> int:
    v = _common.Verify.start(args, DATASET, circo.DOWNLOAD_COMMAND)
    if v is None:
        return 1
    files = v.read("gallery", circo.read_image_info, v.root)  # {id: file name}
    if files is None:
        return v.finish()
    missing = circo.missing_images(v.root, files)
    print(f"gallery: {len(files):,} images in {circo.IMAGE_INFO.name}, {len(missing):,} missing")
    v.missing("gallery", [v.root / circo.IMAGE_DIR / files[i] for i in missing], len(files), "images")
    for split in v.splits(circo.SPLITS):
        queries = v.read(split, circo.read_queries, v.root, split)
        if queries is None:
            continue
        n_gt = sum(len(q.gt) for q in queries)
        per_query = f"{n_gt / len(queries):.2f} ground truths per query" if n_gt else "ground truths hidden"
        print(f"{split}: {len(queries):,} queries, {per_query}")
        absent = circo.not_in_gallery(queries, files)
        if absent:
            v.problem(f"NOT IN GALLERY {split}: {len(absent)} reference / ground-truth ids: "
                      f"{absent[:10]}{' ...' if len(absent) > 10 else ''}")
        v.count(f"{split} queries", len(queries), circo.EXPECTED_QUERIES[split], source="counted from miccunifi/CIRCO")
        v.record(split, dict(pairs=len(queries), ground_truths=n_gt, gallery=len(files), ids=[q.id for q in queries]))
    return v.finish()


def build_parser():
    parser, sub = _common.script_parser("circo.py", __doc__)
    d = _common.add_download(sub, cmd_download, root_help="the CIRCO folder",
                             help="fetch the annotations (GitHub) and COCO unlabeled2017 (cocodataset.org)",
                             archive_help="use this already downloaded unlabeled2017.zip")
    d.add_argument("--skip-images", action="store_true", help="fetch the annotations and the image list only")
    _common.add_verify(sub, cmd_verify, circo.SPLITS, help="list missing images by id, check counts, write / check "
                                                           "the manifest")
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
