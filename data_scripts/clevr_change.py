"""CLEVR-Change (Park et al., ICCV 2019): download, prepare the evaluation ground truth, verify.

    python data_scripts/clevr_change.py download --root DIR [--archive clevr_change.tar.gz] [--keep-archive]
    python data_scripts/clevr_change.py prepare  --root DIR [--split test] [--out FILE] [--change-only]
    python data_scripts/clevr_change.py verify   --root DIR [--split all|train|val|test] [--update]

Source: ``clevr_change.tar.gz`` on Google Drive, file id 1HJ3gWjaUJykEckyb2M0MB4HnrJSihjVe (README of
Seth-Park/RobustChangeCaptioning); ``download`` fetches it with gdown when installed (``pip install gdown``;
otherwise it prints the manual URL: download in a browser and pass the file with ``--archive``), then extracts the
archive's ``data/`` folder into DIR. No checksum is published: the sha256 of the archive is recorded in
``DIR/idclab_manifest.json``. Terms: no licence stated (CLEVR engine, CC BY 4.0 lineage); research use, cite, do not
re-host. The archive is several GB [unverified size]; these steps were not run against the real file (no network
where they were written) and are tested on small trees of the same layout.

``prepare`` writes CLIP4IDC's "Total" ground truth for one split (its ``clevr_total_change_captions_reformat.json``,
made by RCC's ``utils/eval_utils.py``, which CLIP4IDC does not ship): COCO format, change captions under
"XXXXXX", no-change captions under "XXXXXX_n", plus ``<split>_groups.json`` (id -> change type / "distractor") for
``idclab score-captions GT RES --groups GROUPS``.

``verify`` lists every missing image (never drops a scene), prints counts per split, warns where they differ from
the published ones (67,660 / 3,976 / 7,970 pairs, change + distractor, a third-party [2nd] figure), and records the
ids per split in the manifest (later runs report changed ids). It also verifies a Shapes export
(``idclab shapes export --task idc``), against the counts in its ``shapes_meta.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
from pathlib import Path

import _common

from idclab.data import clevr_change as cc

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
        print(f"{root} already holds CLEVR-Change; check it with\n  python data_scripts/clevr_change.py verify "
              f"--root {root}")
        return 0
    if args.archive is not None:
        archive = args.archive
        if not archive.is_file():
            raise SystemExit(f"--archive {archive} does not exist.")
    else:
        archive = _common.gdrive_download(DRIVE_ID, root / "_downloads" / ARCHIVE_NAME, script="clevr_change.py",
                                          root=root)
    print(f"  checksum not published for {ARCHIVE_NAME}; recording its sha256 in the manifest", file=sys.stderr)
    _common.record_download(root, DATASET, ARCHIVE_NAME, dict(
        url=_common.drive_urls(DRIVE_ID)[0], bytes=archive.stat().st_size, sha256=_common.file_hash(archive),
        checksum="not published"))
    tmp = root / "_extract"
    if tmp.exists():  # an interrupted extraction: start it again
        shutil.rmtree(tmp)
    print(f"  extracting {archive} ...", file=sys.stderr)
    _common.extract(archive, tmp)
    found = sorted(p.parent for p in tmp.rglob("change_captions.json"))
    if not found:
        raise SystemExit(f"{archive} has no change_captions.json: it is not the CLEVR-Change archive.")
    data = found[0]  # the archive's data/ folder
    for child in sorted(data.iterdir()):
        target = root / child.name
        if target.exists():
            raise SystemExit(f"{target} already exists; move it away (or use an empty --root) and re-run.")
        shutil.move(str(child), str(target))
    shutil.rmtree(tmp)
    if args.archive is None and not args.keep_archive:
        archive.unlink()
    print(f"Done. Next:\n  python data_scripts/clevr_change.py verify --root {root}\n"
          f"  python data_scripts/clevr_change.py prepare --root {root} --split test")
    return 0


def cmd_prepare(args) -> int:
    root: Path = args.root
    scenes = cc.read_split(root, args.split)
    gts, groups = cc.references(scenes, with_no_change=not args.change_only)
    kind = "change" if args.change_only else "total_change"
    out: Path = args.out or root / "gt" / f"{args.split}_{kind}_captions_reformat.json"
    _common.write_json(out, _common.coco_ground_truth(
        gts, description=f"CLEVR-Change {args.split}: change captions under XXXXXX, no-change captions under "
                         f"XXXXXX_n (CLIP4IDC 'Total' setting)" if not args.change_only else
                         f"CLEVR-Change {args.split}: change captions"))
    groups_path = out.with_name(f"{args.split}_groups.json")
    _common.write_json(groups_path, groups)
    n_refs = sum(len(v) for v in gts.values())
    print(f"wrote {out} ({len(gts):,} ids, {n_refs:,} references) and {groups_path}\n"
          f"score generated captions ({{id: caption}} for the same ids) with\n"
          f"  idclab score-captions {out} RESULTS.json --groups {groups_path}")
    return 0


def cmd_verify(args) -> int:
    root: Path = args.root
    if not root.is_dir():
        print(f"ERROR: {root} does not exist. Download the data with\n  {cc.DOWNLOAD_COMMAND.format(root=root)}")
        return 1
    meta_path = root / "shapes_meta.json"
    shapes_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if args.split != "all":
        splits = [args.split]
    elif shapes_meta is not None:  # a Shapes export holds the splits it was asked for
        splits = [s for s in cc.SPLITS if s in shapes_meta.get("counts", {})]
    else:
        splits = list(cc.SPLITS)
    report = root / "verify_missing.txt"
    if report.exists():
        report.unlink()
    manifest = _common.read_manifest(root, DATASET)
    problems, warnings_, entries = [], [], {}
    for split in splits:
        try:
            scenes = cc.read_split(root, split)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"ERROR {split}: {e}")
            continue
        ids = [s.id for s in scenes]
        n = len(scenes)
        types = dict(sorted(collections.Counter(s.change_type for s in scenes).items()))
        n_caps = sum(len(s.captions) for s in scenes)
        n_nc = sum(len(s.no_change_captions) for s in scenes)
        print(f"{split}: {n:,} scenes = {2 * n:,} pairs (change + distractor); {n_caps:,} change and {n_nc:,} "
              f"no-change captions; types {types}")
        missing = cc.missing_files(scenes)
        if missing:
            _common.report_missing(root, split, missing, report)
            problems.append(f"MISSING {split}: {len(missing)} of {3 * len(scenes)} image files (listed above)")
        if shapes_meta is not None:
            w = _common.compare_count(f"{split} scenes", n, shapes_meta["counts"].get(split), source="shapes_meta.json")
        else:
            w = _common.compare_count(f"{split} pairs (2 x {n:,} scenes)", 2 * n, cc.EXPECTED_PAIRS[split],
                                      source="[2nd] third-party figure, not counted from splits.json")
        warnings_ += [w] if w else []
        if not args.update:
            problems += _common.check_ids(manifest, split, ids)
        entries[split] = dict(scenes=n, pairs=2 * n, change_captions=n_caps, no_change_captions=n_nc, types=types,
                              ids=ids)
    return _common.finish_verify(root, DATASET, entries, problems=problems, warnings_=warnings_, update=args.update)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python data_scripts/clevr_change.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch clevr_change.tar.gz (Google Drive) and extract it into --root")
    d.add_argument("--root", type=Path, required=True, help="where images/, sc_images/, ... will live")
    d.add_argument("--archive", type=Path, default=None, help="use this already downloaded clevr_change.tar.gz")
    d.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after extraction")
    d.set_defaults(func=cmd_download)
    p = sub.add_parser("prepare", help="write the COCO-format evaluation ground truth of a split")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--split", choices=cc.SPLITS, default="test")
    p.add_argument("--out", type=Path, default=None,
                   help="default: ROOT/gt/<split>_total_change_captions_reformat.json")
    p.add_argument("--change-only", action="store_true", help="leave out the no-change (_n) references")
    p.set_defaults(func=cmd_prepare)
    v = sub.add_parser("verify", help="list missing files, check counts, write / check the manifest")
    v.add_argument("--root", type=Path, required=True)
    v.add_argument("--split", choices=("all",) + cc.SPLITS, default="all")
    v.add_argument("--update", action="store_true", help="rewrite the manifest's ids instead of comparing them")
    v.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
