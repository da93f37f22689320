"""The ``idclab`` command.

    idclab shapes export --task idc|cir --split S --n N --out DIR     write Shapes data in the real datasets' layouts
    idclab train clip --profile smoke|toy --out DIR                    pretrain a CLIP on Shapes scene descriptions
    idclab eval clip --model shapes-clip|CHECKPOINT                    text<->image R@1/5/10 on held-out Shapes (JSON)
    idclab train clip4idc --profile P --dataset D --out DIR            CLIP4IDC: adaptation, then captioning
    idclab eval clip4idc --checkpoint CKPT                             caption metrics per change type, retrieval (JSON)
    idclab caption BEFORE AFTER --checkpoint CKPT [--beam N]           describe what changed between two images
    idclab score-captions GTS.json RES.json [--groups G.json]          BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (JSON)

Every command that reports numbers prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import dataclasses
import shlex
import sys
from pathlib import Path

def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# ----------------------------------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------------------------------


def cmd_shapes_export(args) -> None:
    from idclab.data import shapes

    export = shapes.export_idc if args.task == "idc" else shapes.export_cir
    out = export(args.out, split=args.split, n=args.n, seed=args.seed, size=args.size)
    print(f"wrote {args.n} {args.task} {args.split} items to {out}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------------
# train / eval clip
# ----------------------------------------------------------------------------------------------------------------------


def cmd_train_clip(args) -> None:
    from idclab import shapes_clip

    config = shapes_clip.preset(args.profile)
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
    model, result = shapes_clip.train_clip(config, args.out, resume="auto" if args.resume else None)
    report = dict(profile=args.profile, steps=config.steps, seconds=round(result.seconds, 1), best_val=result.best,
                  best_checkpoint=str(result.best_checkpoint))
    if args.export:
        command = "idclab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        report["test"] = shapes_clip.export_shapes_clip(result.best_checkpoint, args.export, command=command)
        report["exported"] = str(args.export)
    _print_json(report)


def cmd_eval_clip(args) -> None:
    from idclab import backbones, shapes_clip
    from idclab.train import load_checkpoint

    if args.model == backbones.SHAPES_CLIP or args.model in backbones.TINY_CONFIGS:
        model = backbones.load_clip(args.model)
        seed = 0
        n = args.n or 1000
    else:
        path = Path(args.model)
        if not path.exists():
            raise SystemExit(f"error: --model {args.model!r} is neither 'shapes-clip' nor an existing checkpoint file.")
        state = load_checkpoint(path)
        if state.get("extra", {}).get("stage") != "clip-pretrain":
            raise SystemExit(f"error: {path} is not a CLIP pretraining checkpoint (from `idclab train clip`).")
        config = shapes_clip.ClipPretrainConfig(**state["extra"]["clip"])
        model = backbones.load_clip(config.arch)
        model.load_state_dict(state["model"])
        seed, n = config.seed, args.n or config.n_test
    report = dict(model=args.model, **shapes_clip.evaluate_retrieval(model, split=args.split, n=n, seed=seed))
    report.update(shapes_clip.attribute_probe(model, seed=seed))
    _print_json(report)


# ----------------------------------------------------------------------------------------------------------------------
# CLIP4IDC: train, eval, caption
# ----------------------------------------------------------------------------------------------------------------------


def cmd_train_clip4idc(args) -> None:
    from idclab.models import clip4idc

    cfg = clip4idc.config_for(args.dataset, args.profile)
    for stage, steps in (("adapt", args.adapt_steps), ("caption", args.caption_steps)):
        if steps is not None:
            cfg = dataclasses.replace(cfg, **{stage: dataclasses.replace(getattr(cfg, stage), max_steps=steps)})
    if args.freeze_clip:
        cfg = dataclasses.replace(cfg, caption=dataclasses.replace(cfg.caption, freeze_clip=True))
    stages = clip4idc.STAGES if args.stage == "both" else (args.stage,)
    results = clip4idc.train(cfg, args.out, stages=stages, root=args.root, init=args.init, resume=args.resume)
    _print_json({stage: dict(steps=r.history[-1]["step"] if r.history else None, seconds=round(r.seconds, 1),
                             best_val=r.best, best_checkpoint=str(r.best_checkpoint))
                 for stage, r in results.items()} | dict(profile=cfg.profile, dataset=cfg.dataset, out=str(args.out)))


def cmd_eval_clip4idc(args) -> None:
    from idclab.models import clip4idc

    _print_json(clip4idc.evaluate(args.checkpoint, split=args.split, root=args.root, beam=args.beam, limit=args.n))


def cmd_caption(args) -> None:
    from idclab.models import clip4idc

    print(clip4idc.caption(args.before, args.after, args.checkpoint, beam=args.beam))


# ----------------------------------------------------------------------------------------------------------------------
# score-captions
# ----------------------------------------------------------------------------------------------------------------------


def cmd_score_captions(args) -> None:
    from idclab.metrics import captioning

    gts = captioning.load_caption_json(args.gts, kind="gts")
    res = captioning.load_caption_json(args.res, kind="res")
    if args.groups:
        groups = json.loads(Path(args.groups).read_text())
        scores = captioning.score_captions_by_group(gts, res, groups, spice=args.spice, allow_empty=args.allow_empty)
    else:
        scores = captioning.score_captions(gts, res, spice=args.spice, allow_empty=args.allow_empty)
    _print_json(scores)


# ----------------------------------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idclab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    shapes = sub.add_parser("shapes", help="the Shapes toy world").add_subparsers(dest="action", required=True)
    exp = shapes.add_parser("export", help="write Shapes data in CLEVR-Change (idc) or CIRR (cir) layout")
    exp.add_argument("--task", choices=["idc", "cir"], required=True)
    exp.add_argument("--split", choices=["train", "val", "test"], required=True)
    exp.add_argument("--n", type=int, required=True)
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--size", type=int, default=64, help="image side in pixels")
    exp.set_defaults(func=cmd_shapes_export)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    tc = train.add_parser("clip", help="pretrain a CLIP on Shapes scene descriptions (how shapes-clip was made)")
    tc.add_argument("--profile", choices=["smoke", "toy"], default=None, help="default: $IDCLAB_PROFILE or toy")
    tc.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, config.json)")
    tc.add_argument("--steps", type=int, default=None, help="override the profile's number of steps")
    tc.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tc.add_argument("--export", type=Path, default=None, help="also pack the best checkpoint as a shapes-clip asset")
    tc.set_defaults(func=cmd_train_clip)

    t4 = train.add_parser("clip4idc", help="CLIP4IDC: adaptation (IP-T/T-IP retrieval), then captioning")
    t4.add_argument("--profile", choices=["smoke", "toy", "paper"], default=None,
                    help="default: $IDCLAB_PROFILE or toy (smoke and toy run on the Shapes world)")
    t4.add_argument("--dataset", choices=["shapes", "clevr", "spot", "ier"], default="shapes")
    t4.add_argument("--out", type=Path, required=True, help="run directory; OUT/adapt and OUT/caption hold checkpoints")
    t4.add_argument("--root", type=Path, default=None, help="dataset folder (clevr, spot, ier), from data_scripts/")
    t4.add_argument("--stage", choices=["both", "adapt", "caption"], default="both",
                    help="'caption' alone starts from --init, or from the plain CLIP (ablation: no adaptation)")
    t4.add_argument("--init", type=Path, default=None, help="stage-1 checkpoint or run folder for --stage caption")
    t4.add_argument("--freeze-clip", action="store_true", help="ablation: keep CLIP frozen while captioning")
    t4.add_argument("--adapt-steps", type=int, default=None, help="override the profile's stage-1 steps")
    t4.add_argument("--caption-steps", type=int, default=None, help="override the profile's stage-2 steps")
    t4.add_argument("--resume", action="store_true", help="continue each stage from its last.pt")
    t4.set_defaults(func=cmd_train_clip4idc)

    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    ec = ev.add_parser("clip", help="text<->image retrieval on held-out Shapes scenes")
    ec.add_argument("--model", default="shapes-clip", help="'shapes-clip' or a checkpoint from `idclab train clip`")
    ec.add_argument("--split", choices=["val", "test"], default="test")
    ec.add_argument("--n", type=int, default=None, help="gallery size (default: 1000, or the run's n_test)")
    ec.set_defaults(func=cmd_eval_clip)

    e4 = ev.add_parser("clip4idc", help="caption metrics (x100) overall and per change type; retrieval R@1/5/10")
    e4.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or run folder")
    e4.add_argument("--split", choices=["val", "test"], default="test")
    e4.add_argument("--root", type=Path, default=None, help="dataset folder (clevr, spot, ier)")
    e4.add_argument("--beam", type=int, default=1, help="beam width (1: greedy, the reference's decoding)")
    e4.add_argument("--n", type=int, default=None, help="evaluate the first N pairs only")
    e4.set_defaults(func=cmd_eval_clip4idc)

    cp = sub.add_parser("caption", help="describe the difference between two images with a CLIP4IDC checkpoint")
    cp.add_argument("before", type=Path)
    cp.add_argument("after", type=Path)
    cp.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or run folder")
    cp.add_argument("--beam", type=int, default=1, help="beam width (1: greedy)")
    cp.set_defaults(func=cmd_caption)

    sc = sub.add_parser("score-captions", help="caption metrics with pycocoevalcap")
    sc.add_argument("gts", type=Path, help="JSON: id -> [references] (or COCO annotations format)")
    sc.add_argument("res", type=Path, help="JSON: id -> caption or [caption] (or COCO results list)")
    sc.add_argument("--groups", type=Path, default=None, help="JSON: id -> group (e.g. change type); scores per group")
    sc.add_argument("--spice", action="store_true", help="also SPICE (needs a one-time Stanford CoreNLP download)")
    sc.add_argument("--allow-empty", action="store_true", help="score empty hypotheses as empty captions (score 0)")
    sc.set_defaults(func=cmd_score_captions)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Library errors already name the fix; show them without a traceback.
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
