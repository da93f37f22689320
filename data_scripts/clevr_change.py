"""CLEVR-Change (Park et al., ICCV 2019): download, prepare the evaluation ground truth, verify.

    python data_scripts/clevr_change.py download --root DIR [--archive clevr_change.tar.gz] [--keep-archive]
    python data_scripts/clevr_change.py prepare  --root DIR [--split test] [--out FILE] [--change-only]
    python data_scripts/clevr_change.py verify   --root DIR [--split all|train|val|test] [--update]

Source: ``clevr_change.tar.gz`` on Google Drive, file id 1HJ3gWjaUJykEckyb2M0MB4HnrJSihjVe (README of
Seth-Park/RobustChangeCaptioning); ``download`` fetches it with gdown when installed (``pip install gdown``;
otherwise it prints the manual URL: download in a browser and pass the file with ``--archive``), then extracts the
archive's ``data/`` folder into DIR. No checksum is published: the sha256 of the archive is recorded in
``DIR/idclab_manifest.json``. Terms: no licence stated (CLEVR engine, CC BY 4.0 lineage); research use, cite, do not
re-host. The archive is several GB; these steps are tested on small trees of the same layout.

``prepare`` writes the "Total" ground truth of one split in the structure of the one CLIP4IDC ships
(``gt/clevr_total_change_captions_reformat.json``, listed in its README and built by RCC's ``utils/eval_utils.py``):
COCO format, change captions under "XXXXXX.png", no-change captions under "XXXXXX.png_n" (the ids of those tools,
so their result files score against it directly), image entries {"filename", "id"}; plus ``<split>_groups.json``
(id -> change type / "distractor") for ``idclab score-captions GT RES --groups GROUPS``. CLIP4IDC's file holds every
scene of every split; this one holds the chosen split only, so a result file of that split matches it id for id.

``verify`` lists every missing image (never drops a scene), prints counts per split, warns where they differ from
the published ones (67,660 / 3,976 / 7,970 pairs, change + distractor, a third-party [2nd] figure), and records the
ids per split in the manifest (later runs report changed ids). It also verifies a Shapes export
(``idclab shapes export --task idc``), against the counts in its ``shapes_meta.json``.
"""

from __future__ import annotations

import collections
import json
import shutil
import sys
from pathlib import Path

import _common

from idclab.data import clevr_change as cc
from idclab.data._common import missing_files, pair_files, png_id

DATASET = "clevr_change"
DRIVE_ID = "1HJ3gWjaUJykEckyb2M0MB4HnrJSihjVe"
ARCHIVE_NAME = "clevr_change.tar.gz"
TERMS = dict(
    paper="Park, Darrell, Rohrbach. Robust Change Captioning. ICCV 2019.",
    sources=[f"Google Drive {DRIVE_ID} ({ARCHIVE_NAME}), linked from github.com/Seth-Park/RobustChangeCaptioning"],
    terms="no licence stated by the authors; rendered with the CLEVR engine (CLEVR is CC BY 4.0). "
          "Research use; cite the paper; do not re-host.",
)


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("CLEVR-Change", **TERMS)
    if (root / "change_captions.json").is_file() and (root / "images").is_dir():
        print(f"{root} already holds CLEVR-Change; check it with\n  {cc.VERIFY_COMMAND.format(root=root)}")
        return 0
    if args.archive is not None:
        archive = _common.given_archive(root, DATASET, args.archive, url=_common.drive_urls(DRIVE_ID)[0],
                                        name=ARCHIVE_NAME)
    else:
        archive = _common.gdrive_download(DRIVE_ID, root / "_downloads" / ARCHIVE_NAME, script="clevr_change.py",
                                          root=root)
        _common.given_archive(root, DATASET, archive, url=_common.drive_urls(DRIVE_ID)[0], name=ARCHIVE_NAME)
    with _common.unpacked(archive, root) as tree:
        found = sorted(p.parent for p in tree.rglob("change_captions.json"))
        if not found:
            raise SystemExit(f"{archive} has no change_captions.json: it is not the CLEVR-Change archive.")
        for child in sorted(found[0].iterdir()):  # the archive's data/ folder
            target = root / child.name
            if target.exists():
                raise SystemExit(f"{target} already exists; move it away (or use an empty --root) and re-run.")
            shutil.move(str(child), str(target))
    if args.archive is None and not args.keep_archive:
        archive.unlink()
    print(f"Done. Next:\n  {cc.VERIFY_COMMAND.format(root=root)}\n"
          f"  python data_scripts/clevr_change.py prepare --root {root} --split test")
    return 0


def cmd_prepare(args) -> int:
    root: Path = args.root
    gts, groups = cc.references(cc.read_split(root, args.split), with_no_change=not args.change_only)
    kind = "change" if args.change_only else "total_change"
    out: Path = args.out or root / "gt" / f"{args.split}_{kind}_captions_reformat.json"
    description = (f"CLEVR-Change {args.split}: change captions" if args.change_only else
                   f"CLEVR-Change {args.split}: change captions under XXXXXX.png, no-change captions under "
                   f"XXXXXX.png_n (CLIP4IDC 'Total' setting)")
    _common.write_prepared(out, gts, id_name="XXXXXX.png", description=description)
    groups_path = out.with_name(f"{args.split}_groups.json")
    _common.write_json(groups_path, groups)
    print(f"and {groups_path}; per change type:\n  idclab score-captions {out} RESULTS.json --groups {groups_path}")
    return 0


def cmd_verify(args) -> int:
    v = _common.Verify.start(args, DATASET, cc.DOWNLOAD_COMMAND, same_form=png_id)
    if v is None:
        return 1
    meta_path = v.root / "shapes_meta.json"
    shapes_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if shapes_meta is not None and args.split == "all":  # a Shapes export holds the splits it was asked for
        splits = [s for s in cc.SPLITS if s in shapes_meta.get("counts", {})]
    else:
        splits = v.splits(cc.SPLITS)
    for split in splits:
        scenes = v.read(split, cc.read_split, v.root, split)
        if scenes is None:
            continue
        n = len(scenes)
        types = dict(sorted(collections.Counter(s.change_type for s in scenes).items()))
        n_caps = sum(len(s.captions) for s in scenes)
        n_nc = sum(len(s.no_change_captions) for s in scenes)
        print(f"{split}: {n:,} scenes = {2 * n:,} pairs (change + distractor); {n_caps:,} change and {n_nc:,} "
              f"no-change captions; types {types}")
        v.missing(split, missing_files(pair_files(scenes)), 3 * n)
        if shapes_meta is not None:
            v.count(f"{split} scenes", n, shapes_meta["counts"].get(split), source="shapes_meta.json")
        else:
            v.count(f"{split} pairs (2 x {n:,} scenes)", 2 * n, cc.EXPECTED_PAIRS[split],
                    source="published by third-party summaries, not counted from splits.json")
        v.record(split, dict(scenes=n, pairs=2 * n, change_captions=n_caps, no_change_captions=n_nc, types=types,
                             ids=[s.id for s in scenes]))
    return v.finish()


def build_parser():
    parser, sub = _common.script_parser("clevr_change.py", __doc__)
    _common.add_download(sub, cmd_download, help="fetch clevr_change.tar.gz (Google Drive) and extract it into --root",
                         root_help="where images/, sc_images/, ... will live",
                         archive_help="use this already downloaded clevr_change.tar.gz")
    p = _common.add_prepare(sub, cmd_prepare, cc.SPLITS,
                            out_help="default: ROOT/gt/<split>_total_change_captions_reformat.json")
    p.add_argument("--change-only", action="store_true", help="leave out the no-change (_n) references")
    _common.add_verify(sub, cmd_verify, cc.SPLITS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
