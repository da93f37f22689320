"""ImageNet-R + ImageNet val for Pic2Word's domain conversion benchmark: download, sort ImageNet val, verify.

    python data_scripts/imagenet_r.py download --root DIR [--archive imagenet-r.tar] [--keep-archive]
    python data_scripts/imagenet_r.py sort-val --root DIR --val-dir VAL_DIR --labels LABELS [--move]
    python data_scripts/imagenet_r.py verify   --root DIR [--update]

Sources:

* ImageNet-R (Hendrycks et al., ICCV 2021): ``https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar`` (README
  of hendrycks/imagenet-r; about 2 GB [unverified]), fetched resumably (an interrupted download continues) and
  extracted to DIR/imagenet-r/<wnid>/<rendition>_<N>.jpg. No checksum is published: the sha256 of the tar is recorded
  in DIR/idclab_manifest.json. Terms: code MIT; the images are web-scraped, with no separate licence.
* ImageNet-1k **val** (the queries): gated. Log in at image-net.org (or accept the Kaggle "ImageNet Object
  Localization Challenge" rules), download the 50,000 val images yourself, then ``sort-val`` copies (``--move``:
  moves) the photos of ImageNet-R's 200 classes into DIR/real/<wnid>/. The class of each photo comes from
  ``--labels``, any of:

  - Kaggle's ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, rows ``ILSVRC2012_val_00000001,n01751748
    x1 y1 x2 y2 ...`` (the first token of PredictionString is the wnid);
  - a plain text file of ``<file name> <wnid>`` lines (``.JPEG`` is added to names without a suffix);
  - ``valprep.sh`` (the usual ImageNet-val sorting script), lines ``mv ILSVRC2012_val_00000001.JPEG n01751748/``.

  The 200 wnids are the folders of DIR/imagenet-r, so download ImageNet-R first. ImageNet's terms of access apply.

Pic2Word's shipped lists ``imgnet_real_query.txt`` and ``imgnet_targets.txt`` (data/imgnet/ of
google-research/composed_image_retrieval) may be copied into DIR; the loader then uses them. ``verify`` lists every
missing file, compares the counts with Pic2Word's (10,000 real photos; 6,983 targets = cartoon 3,726, origami 550,
toy 1,511, sculpture 1,196; gallery 16,983), prints the queries excluded for want of a target, and records the gallery
names in the manifest (later runs report changes). These steps are tested on small trees of the same layout.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import _common

from idclab.data import imagenet_r as ir
from idclab.data._common import listing

DATASET = "imagenet_r"
URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
ARCHIVE_NAME = "imagenet-r.tar"
TERMS = dict(
    paper="Hendrycks et al. The Many Faces of Robustness. ICCV 2021 (ImageNet-R); queries from ImageNet-1k val "
          "(Russakovsky et al., IJCV 2015), as in Saito et al., Pic2Word, CVPR 2023.",
    sources=[URL, "ImageNet-1k val: image-net.org (gated; download it yourself, then run sort-val)"],
    terms="ImageNet-R code MIT, images web-scraped with no separate licence; ImageNet val under image-net.org's "
          "terms of access (non-commercial research). Do not re-host.",
)
MANUAL_VAL_STEP = """\
Next, the real query photos (ImageNet-1k val is gated, so this step is manual):
  1. log in at https://image-net.org (or accept the Kaggle 'ImageNet Object Localization Challenge' rules) and
     download the validation images (ILSVRC2012_img_val.tar, or Kaggle's ILSVRC/Data/CLS-LOC/val/);
  2. get their labels: Kaggle's LOC_val_solution.csv, valprep.sh, or a '<file> <wnid>' text file;
  3. python data_scripts/imagenet_r.py sort-val --root {root} --val-dir VAL_DIR --labels LABELS
  4. python data_scripts/imagenet_r.py verify --root {root}"""


def cmd_download(args) -> int:
    root: Path = args.root
    _common.print_terms("ImageNet-R (with ImageNet val queries)", **TERMS)
    r_dir = root / ir.RENDITIONS_DIR
    if r_dir.is_dir() and any(p.is_dir() and ir.WNID.match(p.name) for p in r_dir.iterdir()):
        print(f"{r_dir} already holds ImageNet-R; not downloading it again.", file=sys.stderr)
    else:
        if args.archive is not None:
            archive = _common.given_archive(root, DATASET, args.archive, url=URL, name=ARCHIVE_NAME)
        else:
            archive = root / "_downloads" / ARCHIVE_NAME
            _common.record_download(root, DATASET, ARCHIVE_NAME, _common.download(URL, archive))
        with _common.unpacked(archive, root) as tree:
            _common.merge_folder(_common.find_folder(tree, ir.RENDITIONS_DIR, archive, "the ImageNet-R tar"), r_dir)
        if args.archive is None and not args.keep_archive:
            archive.unlink()
        n = sum(1 for p in r_dir.iterdir() if p.is_dir())
        print(f"  {n} classes -> {r_dir}", file=sys.stderr)
    print(MANUAL_VAL_STEP.format(root=root))
    return 0


def read_val_labels(path: Path) -> list[tuple[str, str]]:
    """[(file name, wnid)] from Kaggle's LOC_val_solution.csv, valprep.sh, or '<file> <wnid>' lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, bad = [], []
    if lines and lines[0].startswith("ImageId"):  # Kaggle: ImageId,PredictionString ("wnid x1 y1 x2 y2 ...")
        for n, row in enumerate(csv.DictReader(lines), start=2):
            tokens = (row.get("PredictionString") or "").split()
            if not row.get("ImageId") or not tokens:
                bad.append(n)
                continue
            out.append((row["ImageId"], tokens[0]))
    else:
        for n, line in enumerate(lines, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if tokens[0] == "mkdir" or (tokens[0] == "mv" and len(tokens) != 3):  # valprep.sh also makes folders
                continue
            if tokens[0] == "mv":  # valprep.sh: mv FILE WNID/
                tokens = tokens[1:]
            if len(tokens) != 2:
                bad.append(n)
                continue
            out.append((tokens[0], tokens[1].rstrip("/")))
    bad += [f"{name} {wnid}" for name, wnid in out if not ir.WNID.match(wnid)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} lines are not labels ({listing(bad)}); expected Kaggle's "
                         f"LOC_val_solution.csv, valprep.sh, or '<file name> <wnid>' lines (wnid like n01443537).")
    if not out:
        raise ValueError(f"{path} holds no labels.")
    return [(name if Path(name).suffix else name + ".JPEG", wnid) for name, wnid in out]


def cmd_sort_val(args) -> int:
    root: Path = args.root
    r_dir = root / ir.RENDITIONS_DIR
    wnids = {p.name for p in r_dir.iterdir() if p.is_dir() and ir.WNID.match(p.name)} if r_dir.is_dir() else set()
    if not wnids:
        raise FileNotFoundError(f"{r_dir} holds no class folders; the 200 wnids to keep come from it. Download "
                                f"ImageNet-R first:\n  {ir.DOWNLOAD_COMMAND.format(root=root)}")
    if not args.val_dir.is_dir():
        raise FileNotFoundError(f"--val-dir {args.val_dir} is not a folder.")
    labels = [(name, wnid) for name, wnid in read_val_labels(args.labels) if wnid in wnids]
    missing, done, same = [], 0, 0
    per_class: dict[str, int] = {w: 0 for w in wnids}
    for name, wnid in labels:
        src = args.val_dir / name
        if not src.is_file() and (args.val_dir / wnid / name).is_file():  # a val folder already sorted by class
            src = args.val_dir / wnid / name
        dest = root / ir.REAL_DIR / wnid / name
        if dest.is_file() and (not src.is_file() or _common.file_hash(dest) == _common.file_hash(src)):
            same += 1  # sorted by an earlier run
        elif not src.is_file():
            missing.append(src)
            continue
        elif dest.exists():
            raise RuntimeError(f"{dest} exists and differs from {src}; move it away and re-run.")
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.move if args.move else shutil.copy2)(str(src), str(dest))
            done += 1
        per_class[wnid] += 1
    verb = "moved" if args.move else "copied"
    print(f"{len(labels):,} labelled photos of the {len(wnids)} ImageNet-R classes: {done:,} {verb}, {same:,} already "
          f"in place, {len(missing):,} missing")
    odd = {w: n for w, n in sorted(per_class.items()) if n != ir.REAL_PER_CLASS}
    if odd:
        print(f"WARNING {len(odd)} classes do not have {ir.REAL_PER_CLASS} photos: "
              f"{listing([f'{w}={n}' for w, n in odd.items()])}")
    if missing:
        print(f"MISSING {len(missing)} photos named in {args.labels} are not in {args.val_dir}:")
        for p in missing[:_common.MAX_LISTED]:
            print(f"  {p}")
        if len(missing) > _common.MAX_LISTED:
            print(f"  ... and {len(missing) - _common.MAX_LISTED} more")
        print("FAILED: the photos that exist were sorted; add the missing ones and re-run (sorted ones are kept).")
        return 1
    print(f"Done. Next:\n  {ir.VERIFY_COMMAND.format(root=root)}")
    return 0


def cmd_verify(args) -> int:
    v = _common.Verify.start(args, DATASET, ir.DOWNLOAD_COMMAND)
    if v is None:
        return 1
    root = v.root
    lists = v.read("lists", ir.read_lists, root)
    if lists is None:
        return v.finish()
    gallery = [n for d in ir.DOMAINS for n in lists.renditions[d]] + list(lists.real)
    counts = {d: len(lists.renditions[d]) for d in ir.DOMAINS}
    print(f"lists from {lists.source}: {len(lists.real):,} real photos; targets "
          + ", ".join(f"{d} {n:,}" for d, n in counts.items()) + f"; gallery {len(gallery):,}")
    source = "counted from Pic2Word's data/imgnet/*.txt"
    v.count("real photos", len(lists.real), ir.EXPECTED_QUERIES, source=source)
    v.count("gallery", len(gallery), ir.EXPECTED_GALLERY, source=source)
    for d in ir.DOMAINS:
        v.count(f"{d} targets", counts[d], ir.EXPECTED_TARGETS[d], source=source)
    if lists.classes_without_real:
        v.problem(f"MISSING real photos of {len(lists.classes_without_real)} ImageNet-R classes (no "
                  f"{ir.REAL_DIR}/<wnid>/ folder): {listing(list(lists.classes_without_real))}; run "
                  f"sort-val with labels that cover them")
    missing = ir.missing_files(root, gallery)
    v.missing("val", [root / n for n in missing], len(gallery))
    if not missing:
        bench = ir.load_benchmark(root, check_files=False)
        without = bench.info["queries_without_target"]
        print(f"queries: {len(bench.queries):,}; excluded for want of a target in their domain: "
              + ", ".join(f"{d} {n:,}" for d, n in without.items()))
    v.record("val", dict(lists=lists.source, real_photos=len(lists.real), targets=counts, gallery=len(gallery),
                         ids=gallery))
    return v.finish(ok=f"{len(gallery):,} gallery images")


def build_parser():
    parser, sub = _common.script_parser("imagenet_r.py", __doc__)
    _common.add_download(sub, cmd_download, help="fetch imagenet-r.tar (resumable) and extract it into --root",
                         root_help="Pic2Word's data/imgnet: imagenet-r/ and real/ live here",
                         archive_help="use this already downloaded imagenet-r.tar")
    s = sub.add_parser("sort-val", help="copy ImageNet val photos of the 200 ImageNet-R classes into real/<wnid>/")
    s.add_argument("--root", type=Path, required=True)
    s.add_argument("--val-dir", type=Path, required=True, help="the folder holding ILSVRC2012_val_*.JPEG")
    s.add_argument("--labels", type=Path, required=True,
                   help="LOC_val_solution.csv (Kaggle), valprep.sh, or '<file> <wnid>' lines")
    s.add_argument("--move", action="store_true", help="move the photos instead of copying them")
    s.set_defaults(func=cmd_sort_val)
    _common.add_verify(sub, cmd_verify, help="list missing files, compare counts with Pic2Word's, write / check the "
                                             "manifest",
                       update_help="rewrite the manifest's names instead of comparing them")
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
