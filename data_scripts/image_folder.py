"""Unlabelled image folders for Pic2Word training / ``idclab retrieve``: write a Pic2Word-style TSV, verify images.

    python data_scripts/image_folder.py prepare --images DIR --out FILE.tsv [--relative]
    python data_scripts/image_folder.py verify  (--images DIR | --csv FILE.tsv [--csv-img-key filepath]
                                                 [--csv-separator TAB]) [--report FILE]

Nothing is downloaded: bring your own images (for CC3M, img2dataset with the Conceptual Captions TSV; the images
belong to their owners, the URL list is Google's). ``prepare`` lists every image under DIR (recursively, sorted,
hidden files skipped) into a TAB-separated file with the header ``filepath<TAB>title``, Pic2Word's format
(``--csv-img-key filepath --csv-caption-key title``), with empty titles (Pic2Word's loss never reads captions).
Paths are absolute, because Pic2Word opens each path as written, that is relative to the folder it runs in; so the
TSV works from any working directory, for Pic2Word and for idclab alike. ``--relative`` writes them relative to the
TSV's folder instead (a TSV that moves with its images): idclab resolves those against the TSV's folder, Pic2Word
only when it is started in that folder, and ``verify`` warns about it. ``verify`` opens and decodes every image
and lists the missing (TSV rows whose file does not exist) and the unreadable ones; exit code 1 if there are any.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import _common

from idclab.data import image_folder as imf


def cmd_prepare(args) -> int:
    images = imf.list_images(args.images)
    if not images:
        raise ValueError(f"{args.images} holds no image (looked recursively for {', '.join(imf.IMAGE_SUFFIXES)}).")
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow([imf.PIC2WORD_IMG_KEY, imf.PIC2WORD_CAPTION_KEY])
        for path in images:
            path = path.resolve()
            writer.writerow([Path(os.path.relpath(path, base)).as_posix() if args.relative else str(path), ""])
    tmp.replace(out)
    print(f"wrote {out} ({len(images):,} images, columns {imf.PIC2WORD_IMG_KEY}, {imf.PIC2WORD_CAPTION_KEY}; "
          f"paths {'relative to ' + str(out.parent) if args.relative else 'absolute'})\n"
          f"check the images with\n  python data_scripts/image_folder.py verify --csv {out}")
    return 0


def cmd_verify(args) -> int:
    if args.csv is not None:
        paths, rows = imf.read_image_list(args.csv, img_key=args.csv_img_key, sep=args.csv_separator)
        where = str(args.csv)
        relative = sum(not Path(row[args.csv_img_key]).is_absolute() for row in rows)
        if relative:
            print(f"NOTE {relative:,} paths are relative: checked against {args.csv.parent}, where idclab looks; "
                  f"Pic2Word opens them relative to the folder it runs in, so start it in {args.csv.parent} (or "
                  f"write absolute paths: prepare without --relative).")
    else:
        paths = imf.list_images(args.images)
        where = str(args.images)
        if not paths:
            print(f"ERROR: {where} holds no image.")
            return 1
    missing = [p for p in paths if not p.is_file()]
    unreadable = imf.check_readable([p for p in paths if p.is_file()])
    print(f"{where}: {len(paths):,} images, {len(missing):,} missing, {len(unreadable):,} unreadable")
    for label, bad in (("MISSING", missing), ("UNREADABLE", unreadable)):
        for p in bad[:_common.MAX_LISTED]:
            print(f"{label} {p}")
        if len(bad) > _common.MAX_LISTED:
            print(f"... and {len(bad) - _common.MAX_LISTED} more {label.lower()}"
                  + (f" (all in {args.report})" if args.report else "; pass --report FILE for the full list"))
    if args.report is not None:
        args.report.write_text("".join(f"{label.lower()}\t{p}\n" for label, bad in
                                       (("MISSING", missing), ("UNREADABLE", unreadable)) for p in bad),
                               encoding="utf-8")
    if missing or unreadable:
        print("FAILED (nothing was dropped): replace or remove these files (and their rows), then verify again.")
        return 1
    print("OK")
    return 0


def _separator(value: str) -> str:
    return {"TAB": "\t", "\\t": "\t", "tab": "\t"}.get(value, value)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = _common.script_parser("image_folder.py", __doc__)
    p = sub.add_parser("prepare", help="write a Pic2Word-style TSV (filepath, title) listing a folder's images")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--relative", action="store_true",
                   help="write paths relative to the TSV's folder (default: absolute, as Pic2Word needs them)")
    p.set_defaults(func=cmd_prepare)
    v = sub.add_parser("verify", help="list missing and unreadable images of a folder or a TSV")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="a folder of images")
    src.add_argument("--csv", type=Path, help="a Pic2Word-style TSV")
    v.add_argument("--csv-img-key", default=imf.PIC2WORD_IMG_KEY, help="the column of image paths (default filepath)")
    v.add_argument("--csv-separator", type=_separator, default="\t", help="column separator (default TAB)")
    v.add_argument("--report", type=Path, default=None, help="write every missing / unreadable path to this file")
    v.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _common.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
