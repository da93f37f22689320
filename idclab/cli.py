"""The ``idclab`` command.

    idclab shapes export --task idc|cir --split S --n N --out DIR     write Shapes data in the real datasets' layouts
    idclab train clip --profile smoke|toy --out DIR                    pretrain a CLIP on Shapes scene descriptions
    idclab eval clip --model shapes-clip|CHECKPOINT                    text<->image R@1/5/10 on held-out Shapes (JSON)
    idclab train clip4idc --profile P --dataset D --out DIR            CLIP4IDC: adaptation, then captioning
    idclab eval clip4idc --checkpoint CKPT                             caption metrics per change type, retrieval (JSON)
    idclab caption BEFORE AFTER --checkpoint CKPT [--beam N]           describe what changed between two images
    idclab score-captions GTS.json RES.json [--groups G.json]          BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (JSON)
    idclab train pic2word --profile P --out DIR                        Pic2Word: train the mapping network on images
    idclab train combiner --profile P --dataset D --out DIR            Combiner: fine-tune CLIP, then the Combiner
    idclab eval cir --method M --benchmark B [--checkpoint CKPT]       composed retrieval: M beside the 3 baselines (JSON)
    idclab retrieve --image IMG --text T --gallery DIR --method M      top-k of a folder for one composed query

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
# Composed image retrieval: train pic2word, eval cir, retrieve
# ----------------------------------------------------------------------------------------------------------------------


def cmd_train_pic2word(args) -> None:
    from idclab.models import pic2word

    cfg = pic2word.config_for(args.profile, data=args.data)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=args.steps)
    if args.precompute is not None:
        cfg = dataclasses.replace(cfg, precompute=args.precompute)
    _, result = pic2word.train(cfg, args.out, root=args.root, resume="auto" if args.resume else None)
    _print_json(dict(profile=cfg.profile, data=cfg.data, out=str(args.out), steps=cfg.max_steps,
                     seconds=round(result.seconds, 1), best_val=result.best,
                     best_checkpoint=str(result.best_checkpoint)))


def cmd_train_combiner(args) -> None:
    from idclab.models import combiner

    cfg = combiner.config_for(args.dataset, args.profile, encoder=args.encoder)
    for stage, steps in (("finetune", args.finetune_steps), ("combiner", args.combiner_steps)):
        if steps is not None:
            cfg = dataclasses.replace(cfg, **{stage: dataclasses.replace(getattr(cfg, stage), max_steps=steps)})
    stages = combiner.STAGES if args.stage == "both" else (args.stage,)
    results = combiner.train(cfg, args.out, stages=stages, root=args.root, init=args.init, resume=args.resume)
    _print_json(dict(profile=cfg.profile, dataset=cfg.dataset, encoder=cfg.encoder, out=str(args.out),
                     stages={stage: dict(steps=r.history[-1]["step"] if r.history else None,
                                         seconds=round(r.seconds, 1), best_val=r.best,
                                         best_checkpoint=str(r.best_checkpoint)) for stage, r in results.items()}))


def _is_combiner_run(checkpoint: Path | None) -> bool:
    return checkpoint is not None and checkpoint.is_dir() and any(
        (checkpoint / stage).is_dir() for stage in ("finetune", "combiner"))


def _retriever(args):
    """The retriever that --method names, and the CLIP and prompts of its baselines: pic2word or combiner from
    --checkpoint; a baseline on a Combiner run's CLIP (fine-tuned by stage 1, or frozen) with the Combiner's
    prompts, or on a Pic2Word checkpoint's CLIP, or on --backbone."""
    from idclab import backbones, cir
    from idclab.models import combiner, pic2word

    if args.method in ("pic2word", "combiner") and args.checkpoint is None:
        raise ValueError(f"--method {args.method} needs --checkpoint (a run folder of `idclab train {args.method}`).")
    if args.method == "pic2word":
        return pic2word.load_retriever(args.checkpoint), None, None
    if args.method == "combiner" or _is_combiner_run(args.checkpoint):
        r = combiner.load_retriever(args.checkpoint, method=args.method)
        return r, (None if args.method == "combiner" else r.clip), combiner.PROMPTS
    if args.checkpoint is not None:
        clip = pic2word.load_model(args.checkpoint).clip
    else:
        clip = backbones.load_clip(args.backbone, args.pretrained)
    return cir.Baseline(clip, args.method, preprocess=args.preprocess), clip, None


def cmd_eval_cir(args) -> None:
    from idclab import cir

    bench = cir.load_benchmark(args.benchmark, root=args.root, split=args.split, n=args.n)
    method, clip, prompts = _retriever(args)
    if args.submission is not None:
        if bench.protocol == "circo":
            paths = [cir.circo_submission(method, bench, args.submission / f"circo_{method.method}.json",
                                          cache_dir=args.cache_dir)]
        else:
            paths = cir.cirr_submission(method, bench, args.submission, cache_dir=args.cache_dir)
        _print_json(dict(benchmark=bench.name, split=bench.split, method=method.method,
                         submission=[str(p) for p in paths], queries=len(bench.queries)))
        return
    others = [b for b in cir.Baseline.METHODS if b != method.method]
    results = cir.compare(method, bench, baselines=others, cache_dir=args.cache_dir, clip=clip, prompts=prompts)
    results = {m: results[m] for m in (*cir.Baseline.METHODS, method.method) if m in results}
    _print_json(dict(benchmark=bench.name, split=bench.split, protocol=bench.protocol, info=bench.info,
                     methods={m: dict(metrics=r["metrics"], **({"prompts": r["prompts"]} if "prompts" in r else {}))
                              for m, r in results.items()}))


def cmd_retrieve(args) -> None:
    from idclab import cir, viz

    method, _, _ = _retriever(args)
    kind, text = ("domain", args.domain) if args.domain else ("cirr", args.text)
    if text is None:
        raise ValueError("Give the modification with --text \"...\" (or a target domain with --domain cartoon).")
    top = cir.retrieve(method, args.image, text, args.gallery, k=args.k, kind=kind, cache_dir=args.cache_dir)
    if args.grid is not None:
        from idclab import backbones

        images = [backbones.load_image(p) for p, _ in top]
        fig = viz.retrieval_grid([backbones.load_image(args.image)], images, [list(range(len(top)))], k=len(top),
                                 query_titles=[f"{kind}: {text}"])
        fig.savefig(args.grid, dpi=120, bbox_inches="tight")
    _print_json(dict(method=method.method, query=dict(image=str(args.image), **{kind: text}),
                     top=[dict(rank=i + 1, image=p, similarity=round(s, 4)) for i, (p, s) in enumerate(top)],
                     **({"grid": str(args.grid)} if args.grid else {})))


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

    tp = train.add_parser("pic2word", help="Pic2Word: train the mapping network on unlabelled images")
    tp.add_argument("--profile", choices=["smoke", "toy", "paper"], default=None,
                    help="default: $IDCLAB_PROFILE or toy (smoke and toy train on Shapes photos)")
    tp.add_argument("--out", type=Path, required=True, help="run directory (best.pt, last.pt, config.json)")
    tp.add_argument("--data", choices=["cc3m", "folder", "shapes"], default=None,
                    help="paper profile: a Pic2Word TSV (cc3m, the default) or an image folder")
    tp.add_argument("--root", type=Path, default=None, help="the TSV file (cc3m) or the image folder (folder)")
    tp.add_argument("--steps", type=int, default=None, help="override the profile's number of steps")
    grp = tp.add_mutually_exclusive_group()
    grp.add_argument("--precompute", dest="precompute", action="store_true", default=None,
                     help="encode every image once (faster; no crop augmentation)")
    grp.add_argument("--no-precompute", dest="precompute", action="store_false",
                     help="re-encode every step with RandomResizedCrop(0.9-1.0), as the reference")
    tp.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tp.set_defaults(func=cmd_train_pic2word)

    tcb = train.add_parser("combiner", help="Combiner (CLIP4Cir): fine-tune CLIP (stage 1), then the Combiner (stage 2)")
    tcb.add_argument("--profile", choices=["smoke", "toy", "paper"], default=None,
                     help="default: $IDCLAB_PROFILE or toy (smoke and toy run on Shapes triplets)")
    tcb.add_argument("--dataset", choices=["shapes", "fashioniq", "cirr"], default="shapes")
    tcb.add_argument("--out", type=Path, required=True, help="run directory; OUT/finetune and OUT/combiner")
    tcb.add_argument("--root", type=Path, default=None, help="dataset folder (fashioniq, cirr), from data_scripts/")
    tcb.add_argument("--encoder", choices=["text", "image", "both"], default=None,
                     help="what stage 1 fine-tunes: text (CVPRW, the default) or both (the journal version)")
    tcb.add_argument("--stage", choices=["both", "finetune", "combiner"], default="both",
                     help="'combiner' alone trains on --init's fine-tuned CLIP, or on the frozen CLIP without it")
    tcb.add_argument("--init", type=Path, default=None, help="a stage-1 run for --stage combiner")
    tcb.add_argument("--finetune-steps", type=int, default=None, help="override the profile's stage-1 steps")
    tcb.add_argument("--combiner-steps", type=int, default=None, help="override the profile's stage-2 steps")
    tcb.add_argument("--resume", action="store_true", help="continue each stage from its last.pt")
    tcb.set_defaults(func=cmd_train_combiner)

    def retrieval_method_args(p) -> None:
        p.add_argument("--method", choices=["pic2word", "combiner", "image", "text", "sum"], required=True)
        p.add_argument("--checkpoint", type=Path, default=None,
                       help="a Pic2Word or Combiner run folder (its CLIP also serves the baselines)")
        p.add_argument("--backbone", default="shapes-clip", help="CLIP for the baselines without --checkpoint")
        p.add_argument("--pretrained", default=None, help="open_clip weights tag for --backbone, e.g. openai")
        p.add_argument("--preprocess", choices=["center_crop", "squash", "target_pad"], default="center_crop",
                       help="image preprocessing of the baselines")
        p.add_argument("--cache-dir", type=Path, default=None, help="keep gallery features here between runs")

    ecir = ev.add_parser("cir", help="composed image retrieval: a method beside the image / text / sum baselines")
    retrieval_method_args(ecir)
    ecir.add_argument("--benchmark", choices=["shapes", "cirr", "fashioniq", "circo", "imagenet_r", "coco"],
                      default="shapes")
    ecir.add_argument("--root", type=Path, default=None, help="dataset folder (shapes: an exported tree, optional)")
    ecir.add_argument("--split", default=None, help="default: test for generated Shapes, else val")
    ecir.add_argument("--n", type=int, default=300, help="generated Shapes triplets")
    ecir.add_argument("--submission", type=Path, default=None,
                      help="write test-server files here instead of scoring (CIRR test1: both JSON files; CIRCO)")
    ecir.set_defaults(func=cmd_eval_cir)

    rt = sub.add_parser("retrieve", help="the top-k images of a folder for one composed query")
    retrieval_method_args(rt)
    rt.add_argument("--image", type=Path, required=True, help="the reference image")
    rt.add_argument("--text", default=None, help="the modification, e.g. 'make the red cube blue'")
    rt.add_argument("--domain", default=None, help="instead of --text: a target domain noun ('cartoon', 'sketch')")
    rt.add_argument("--gallery", type=Path, required=True, help="a folder of images (searched recursively)")
    rt.add_argument("--k", type=int, default=5)
    rt.add_argument("--grid", type=Path, default=None, help="also write the query and its top-k as a PNG grid")
    rt.set_defaults(func=cmd_retrieve)

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
