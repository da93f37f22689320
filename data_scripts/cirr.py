"""CIRR (Liu et al., ICCV 2021): download the annotations, explain the manual image step, verify.

    python data_scripts/cirr.py download --root DIR
    python data_scripts/cirr.py verify   --root DIR [--split all|train|val|test1] [--update]

DIR is the ``cirr_dataset`` folder. Sources (branch ``cirr_dataset`` of the CIRR repository; the steps are tested on
small trees of the same layout)::

    https://raw.githubusercontent.com/Cuberick-Orion/CIRR/cirr_dataset/captions/cap.rc2.{train,val,test1}.json
    https://raw.githubusercontent.com/Cuberick-Orion/CIRR/cirr_dataset/image_splits/split.rc2.{train,val,test1}.json
    -> DIR/cirr/captions/..., DIR/cirr/image_splits/...

No checksum is published; their sha256 is recorded in DIR/idclab_manifest.json. Terms: annotations MIT.

**The images cannot be scripted.** They are NLVR2's raw images, given out through the NLVR2 request form
(github.com/lil-lab/nlvr, ``nlvr2/``); since late 2023 the NLVR team often does not answer, and the CIRR README
(Oct 2024) says to email the CIRR authors after filling in the form. Downloading NLVR2 by its URL lists is
discouraged (broken links, lost ``train/`` sub-folders). Put ``train/``, ``dev/`` and ``test1/`` directly under DIR
(the CIRR README shows them under ``img_raw/``; move them up). The images are not licensed by CIRR: NLVR2's terms.
``download`` fetches the annotations, prints these steps and exits with status 0.

``verify`` lists every missing image by name (never drops a query) in DIR/verify_missing.txt, checks that each
reference, target and img_set member is in its split file, prints counts against the published ones (queries
28,225 [unverified] / 4,181 / 4,148; images 16,939 / 2,297 / 2,315) and records the pair ids in the manifest. It
also verifies a Shapes export (``idclab shapes export --task cir``), against the counts in its ``shapes_meta.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import _common

from idclab.data import cirr
from idclab.data import shapes

DATASET = "cirr"
REPO_URL = "https://raw.githubusercontent.com/Cuberick-Orion/CIRR/cirr_dataset/{path}"
TERMS = dict(
    paper="Liu, Rodriguez-Opazo, Teney, Gould. Image Retrieval on Real-life Images with Pre-trained "
          "Vision-and-Language Models. ICCV 2021.",
    sources=["annotations: " + REPO_URL.format(path="{captions,image_splits}/..."),
             "images: NLVR2 raw images, by request only (github.com/lil-lab/nlvr, nlvr2/)"],
    terms="annotations MIT; images not licensed by CIRR (NLVR2's terms apply). Research use; cite the paper; do "
          "not re-host.",
)


def annotation_files() -> list[str]:
    """Repository paths of the six annotation files (they go to DIR/cirr/<same path>)."""
    return [f"{folder}/{prefix}.rc2.{split}.json" for folder, prefix in (("captions", "cap"), ("image_splits", "split"))
            for split in cirr.SPLITS]


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("CIRR", **TERMS)
    for rel in annotation_files():
        info = _common.download(REPO_URL.format(path=rel), root / "cirr" / rel, quiet=True)
        _common.record_download(root, DATASET, f"cirr/{rel}", info)
    print(f"Annotations are in {root / 'cirr'}.\n\nMANUAL STEP: {cirr.IMAGES_STEP.format(root=root)}\n"
          f"Then check everything with\n  python data_scripts/cirr.py verify --root {root}")
    return 0


def cmd_verify(args) -> int:
    v = _common.Verify.start(args, DATASET, cirr.DOWNLOAD_COMMAND)
    if v is None:
        return 1
    meta_path = v.root / cirr.SHAPES_META
    shapes_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if args.split != "all":
        splits = [cirr.canonical_split(args.split)]
    elif shapes_meta is not None:  # a Shapes export holds the splits it was asked for
        splits = [shapes.CIRR_SPLIT[s] for s in shapes.SPLITS if s in shapes_meta.get("counts", {})]
    else:
        splits = list(cirr.SPLITS)
    if not splits:
        v.problem(f"ERROR: {meta_path} lists no split.")
    for split in splits:
        read = v.read(split, lambda: (cirr.read_image_split(v.root, split), cirr.read_queries(v.root, split)))
        if read is None:
            continue
        paths, queries = read
        hidden = sum(1 for q in queries if q.target is None)
        print(f"{split}: {len(queries):,} queries ({hidden:,} with hidden targets), {len(paths):,} images")
        absent = cirr.not_in_gallery(queries, paths)
        if absent:
            v.problem(f"NOT IN SPLIT FILE {split}: {len(absent)} names used by queries: "
                      f"{absent[:10]}{' ...' if len(absent) > 10 else ''}")
        v.missing(split, cirr.missing_files([paths[n] for n in sorted(paths)]), len(paths))
        if shapes_meta is not None:
            shapes_split = {c: s for s, c in shapes.CIRR_SPLIT.items()}[split]
            v.count(f"{split} queries", len(queries), shapes_meta["counts"].get(shapes_split),
                    source="shapes_meta.json")
        else:
            source = "counted from Cuberick-Orion/CIRR (train queries unverified)"
            v.count(f"{split} queries", len(queries), cirr.EXPECTED_QUERIES[split], source=source)
            v.count(f"{split} images", len(paths), cirr.EXPECTED_IMAGES[split], source=source)
        v.record(split, dict(pairs=len(queries), images=len(paths), hidden_targets=hidden,
                             ids=[str(q.pairid) for q in queries]))
    return v.finish()


def build_parser():
    parser, sub = _common.script_parser("cirr.py", __doc__)
    _common.add_download(sub, cmd_download, keep_archive=False, root_help="the cirr_dataset folder",
                         help="fetch the annotations (GitHub) and print the manual NLVR2 image step")
    _common.add_verify(sub, cmd_verify, cirr.SPLITS + tuple(cirr.SPLIT_ALIASES),
                       help="list missing images, check counts, write / check the manifest")
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
