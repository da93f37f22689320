"""The ``idclab`` command.

    idclab shapes export --task idc|cir --split S --n N --out DIR     write Shapes data in the real datasets' layouts
    idclab train clip|clip4idc|pic2word|combiner --out DIR [flags]     train a method (the same flags for all four)
    idclab ablate clip4idc --seeds 3 --out DIR                         the paper's ablation with seeds and verdicts
    idclab eval clip --model shapes-clip|RUN                           text<->image R@1/5/10 on held-out Shapes (JSON)
    idclab eval clip4idc --checkpoint RUN                              caption metrics per change type, retrieval (JSON)
    idclab caption BEFORE AFTER --checkpoint RUN [--beam N]            describe what changed between two images
    idclab score-captions GTS.json RES.json [--groups G.json]          BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (JSON)
    idclab eval cir --method M --benchmark B [--checkpoint RUN]        composed retrieval: M beside the 3 baselines (JSON)
    idclab eval cir --method combiner --checkpoint C.pt --clip-checkpoint CLIP.pt    CLIP4Cir's released files
    idclab retrieve --image IMG --text T --gallery DIR --method M      top-k of a folder for one composed query
    idclab data download|prepare|verify DATASET --root DIR [...]       the data_scripts/ of the papers' datasets

Every ``idclab train`` takes --profile, --dataset, --out, --root, --stage, --resume, --overwrite, --pretrained,
--batch-size, --steps (and --STAGE-steps), --precision, --device, --num-workers, --seed, --eval-every, --ckpt-every.
Every command that reports numbers prints one JSON object on stdout; progress goes to stderr. Errors in what you
asked for are one line naming the fix; unexpected errors (a bug, CUDA out of memory) keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from idclab import backbones, cir, runs, shapes_clip, viz
from idclab.data import shapes
from idclab.metrics import captioning
from idclab.models import clip4idc, combiner, pic2word

PACKAGE_DIR = Path(__file__).resolve().parent
METHODS = {"clip": shapes_clip, "clip4idc": clip4idc, "pic2word": pic2word, "combiner": combiner}
DATASETS = {"clip": ("shapes",), "clip4idc": ("shapes", "clevr", "spot", "ier"), "pic2word": pic2word.DATASETS,
            "combiner": combiner.DATASETS}
HELP = {
    "clip": "pretrain a CLIP on Shapes scene descriptions (how shapes-clip was made)",
    "clip4idc": "CLIP4IDC: adaptation (IP-T/T-IP retrieval), then captioning",
    "pic2word": "Pic2Word: train the mapping network on unlabelled images",
    "combiner": "Combiner (CLIP4Cir): fine-tune CLIP (stage 1), then the Combiner (stage 2)",
}


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# ----------------------------------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------------------------------


def cmd_shapes_export(args) -> None:
    export = shapes.export_idc if args.task == "idc" else shapes.export_cir
    out = export(args.out, split=args.split, n=args.n, seed=args.seed, size=args.size)
    print(f"wrote {args.n} {args.task} {args.split} items to {out}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------------
# train: one command for every method
# ----------------------------------------------------------------------------------------------------------------------


def cmd_train(args) -> None:
    module = METHODS[args.what]
    options = dict(pretrained=args.pretrained, batch_size=args.batch_size, steps=args.steps, precision=args.precision,
                   num_workers=args.num_workers, seed=args.seed, eval_every=args.eval_every,
                   ckpt_every=args.ckpt_every)
    if len(module.STAGES) > 1:
        options.update({f"{s}_steps": getattr(args, f"{s}_steps") for s in module.STAGES})
    if args.what == "clip4idc":
        options["freeze_clip"] = args.freeze_clip or None
    elif args.what == "combiner":
        options["encoder"] = args.encoder
    elif args.what == "pic2word":
        options["precompute"] = args.precompute
    cfg = module.config_for(args.dataset, args.profile, **options)
    stages = None if args.stage == "all" else (args.stage,)
    results = module.train(cfg, args.out, stages=stages, root=args.root, init=args.init, resume=args.resume,
                           overwrite=args.overwrite, device=args.device)
    report = dict(method=args.what, profile=cfg.profile, dataset=cfg.dataset, **runs.summary(results, args.out))
    if args.what == "clip" and args.export:
        command = "idclab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        report["test"] = shapes_clip.export_shapes_clip(args.out, args.export, command=command)
        report["exported"] = str(args.export)
    _print_json(report)


def add_train_parser(train, what: str) -> None:
    module = METHODS[what]
    p = train.add_parser(what, help=HELP[what], description=HELP[what])
    p.add_argument("--profile", choices=["smoke", "toy", "lite", "paper"], default=None,
                   help="default: $IDCLAB_PROFILE or toy (smoke and toy run on the Shapes world)")
    p.add_argument("--dataset", choices=DATASETS[what], default="shapes" if what != "pic2word" else None,
                   help="the real datasets need --root (see data_scripts/)")
    p.add_argument("--out", type=Path, required=True, help="run folder: run.json and one folder per stage")
    p.add_argument("--root", type=Path, default=None, help="dataset folder (or Pic2Word TSV), from data_scripts/")
    p.add_argument("--stage", choices=["all", *module.STAGES], default="all", help="train one stage only")
    if len(module.STAGES) > 1:
        p.add_argument("--init", type=Path, default=None,
                       help=f"a {module.STAGES[0]} checkpoint or run for --stage {module.STAGES[1]}")
    else:
        p.set_defaults(init=None)
    runs_group = p.add_mutually_exclusive_group()
    runs_group.add_argument("--resume", action="store_true", help="continue the run in --out from its resume.pt")
    runs_group.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--pretrained", default=None,
                   help="backbone weights tag, e.g. openai; 'none' = random weights (dry runs, no network)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step and process (every stage)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps of every stage (overrides epochs)")
    if len(module.STAGES) > 1:
        for s in module.STAGES:
            p.add_argument(f"--{s}-steps", type=int, default=None, help=f"optimiser steps of the {s} stage")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="auto: bf16 where the GPU has it, else fp16 with loss scaling; fp32 on the CPU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="steps between validations (0: at the end only)")
    p.add_argument("--ckpt-every", type=int, default=None, help="steps between resume files (0: at the end only)")
    if what == "clip":
        p.add_argument("--export", type=Path, default=None, help="also pack the best checkpoint as a shapes-clip asset")
    if what == "clip4idc":
        p.add_argument("--freeze-clip", action="store_true", help="ablation: keep CLIP frozen while captioning")
    if what == "combiner":
        p.add_argument("--encoder", choices=combiner.ENCODERS, default=None,
                       help="what stage 1 fine-tunes: text (CVPRW, the default) or both (the journal version)")
    if what == "pic2word":
        grp = p.add_mutually_exclusive_group()
        grp.add_argument("--precompute", dest="precompute", action="store_true", default=None,
                         help="encode every image once (faster; no crop augmentation)")
        grp.add_argument("--no-precompute", dest="precompute", action="store_false",
                         help="re-encode every step with RandomResizedCrop(0.9-1.0), as the reference")
    p.set_defaults(func=cmd_train)


def cmd_ablate_clip4idc(args) -> None:
    options = dict(pretrained=args.pretrained, batch_size=args.batch_size, steps=args.steps,
                   adapt_steps=args.adapt_steps, caption_steps=args.caption_steps, precision=args.precision,
                   num_workers=args.num_workers, eval_every=args.eval_every, ckpt_every=args.ckpt_every)
    _print_json(clip4idc.ablate(args.out, dataset=args.dataset, profile=args.profile, seeds=args.seeds,
                                root=args.root, split=args.split, limit=args.n, device=args.device, **options))


def add_ablate_parser(sub) -> None:
    p = sub.add_parser("ablate", help="a paper's ablation with seeds: per-seed values, mean, sd and verdicts (JSON)"
                       ).add_subparsers(dest="what", required=True)
    a = p.add_parser("clip4idc", help="CLIP4IDC: captioners without adaptation (CLIP frozen / fine-tuned) vs with it")
    a.add_argument("--profile", choices=["smoke", "toy", "lite", "paper"], default=None)
    a.add_argument("--dataset", choices=DATASETS["clip4idc"], default="shapes")
    a.add_argument("--root", type=Path, default=None, help="dataset folder for clevr, spot, ier")
    a.add_argument("--out", type=Path, required=True, help="one run folder per row and seed goes here")
    a.add_argument("--seeds", type=int, default=3, help="seeds per row (0, 1, ...); a spread needs at least 2")
    a.add_argument("--split", choices=["val", "test"], default="test")
    a.add_argument("--n", type=int, default=None, help="score the first N pairs only")
    for flag in ("--batch-size", "--steps", "--adapt-steps", "--caption-steps", "--num-workers", "--eval-every",
                 "--ckpt-every"):
        a.add_argument(flag, type=int, default=None)
    a.add_argument("--pretrained", default=None)
    a.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_ablate_clip4idc)


# ----------------------------------------------------------------------------------------------------------------------
# eval clip
# ----------------------------------------------------------------------------------------------------------------------


def cmd_eval_clip(args) -> None:
    if args.n is not None and args.n < 10:
        raise ValueError(f"--n must be >= 10 (the gallery size; R@10 needs at least 10 images), got {args.n}.")
    if args.model == backbones.SHAPES_CLIP or args.model in backbones.TINY_CONFIGS:
        model, seed, n = backbones.load_clip(args.model), 0, 1000 if args.n is None else args.n
    else:
        model = shapes_clip.load(args.model)
        config = model.checkpoint_info["config"]
        seed, n = config.seed, config.n_test if args.n is None else args.n
    report = dict(model=args.model, **shapes_clip.evaluate_retrieval(model, split=args.split, n=n, seed=seed))
    report.update(shapes_clip.attribute_probe(model, seed=seed))
    _print_json(report)


# ----------------------------------------------------------------------------------------------------------------------
# CLIP4IDC: eval, caption
# ----------------------------------------------------------------------------------------------------------------------


def cmd_eval_clip4idc(args) -> None:
    _print_json(clip4idc.evaluate(args.checkpoint, split=args.split, root=args.root, beam=args.beam, limit=args.n))


def cmd_caption(args) -> None:
    print(clip4idc.caption(args.before, args.after, args.checkpoint, beam=args.beam))


# ----------------------------------------------------------------------------------------------------------------------
# Composed image retrieval: eval cir, retrieve
# ----------------------------------------------------------------------------------------------------------------------


def _retriever(args):
    """The retriever that --method names, and the CLIP and prompts of its baselines: pic2word or combiner from
    --checkpoint; a baseline on a run's CLIP (a Combiner run's fine-tuned or frozen one with the Combiner's
    prompts, or a Pic2Word run's), or on --backbone."""
    if args.clip_checkpoint is not None and args.checkpoint is None:
        raise ValueError("--clip-checkpoint goes with --checkpoint COMBINER.pt (the authors' released Combiner).")
    if args.checkpoint is not None and combiner.released_kind(args.checkpoint, trust=args.trust_checkpoint) is not None:
        return _released_retriever(args)
    if args.method in ("pic2word", "combiner", "raw_sum") and args.checkpoint is None:
        raise ValueError(f"--method {args.method} needs --checkpoint (a run folder of `idclab train "
                         f"{'combiner' if args.method == 'raw_sum' else args.method}`).")
    try:
        method = None if args.checkpoint is None else runs.read_header(args.checkpoint)["method"]
    except runs.UnsafeCheckpointError as err:
        raise runs.UnsafeCheckpointError(f"{err} If it is an authors' released file from a source you trust, pass "
                                         "--trust-checkpoint.") from None
    if args.method == "pic2word" or (method == "pic2word" and args.method in cir.Baseline.METHODS):
        model = pic2word.load(runs.resolve_checkpoint(args.checkpoint, method="pic2word"))
        if args.method == "pic2word":
            return pic2word.Pic2WordRetriever(model), None, None
        return cir.Baseline(model.clip, args.method, preprocess=args.preprocess), model.clip, None
    if args.method in ("combiner", "raw_sum") or method == "combiner":
        r = combiner.load_retriever(args.checkpoint, method=args.method)
        return r, (None if args.method == "combiner" else r.clip), combiner.PROMPTS
    if method is not None:
        raise ValueError(f"{args.checkpoint} is a {method} run; eval cir takes a pic2word or combiner run.")
    clip = backbones.load_clip(args.backbone or backbones.SHAPES_CLIP, args.pretrained)
    return cir.Baseline(clip, args.method, preprocess=args.preprocess), clip, None


def _released_retriever(args):
    """CLIP4Cir's released files: --checkpoint COMBINER.pt [--clip-checkpoint CLIP.pt] on --backbone (default
    RN50x4-quickgelu; its --pretrained weights, default openai, only without --clip-checkpoint)."""
    kind = combiner.released_kind(args.checkpoint, trust=args.trust_checkpoint)
    if kind != "Combiner":
        raise ValueError(f"{args.checkpoint} is CLIP4Cir's released {kind}; pass it as --clip-checkpoint and the "
                         "released Combiner as --checkpoint.")
    if args.method == "pic2word":
        raise ValueError(f"{args.checkpoint} is a released Combiner; use --method combiner (or a baseline).")
    pretrained = None if args.clip_checkpoint is not None else (args.pretrained or "openai")
    r = combiner.load_released(args.checkpoint, clip_file=args.clip_checkpoint,
                               backbone=args.backbone or "RN50x4-quickgelu", pretrained=pretrained,
                               trust=args.trust_checkpoint)
    if args.method == "combiner":
        return r, None, combiner.PROMPTS
    if args.method == "raw_sum":
        return combiner.SumRetriever(r.clip, preprocess=r.preprocess), r.clip, combiner.PROMPTS
    return cir.Baseline(r.clip, args.method, prompts=combiner.PROMPTS, preprocess=r.preprocess), r.clip, None


def cmd_eval_cir(args) -> None:
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
    if args.k < 1:
        raise ValueError(f"--k must be >= 1 (images to return), got {args.k}.")
    method, _, _ = _retriever(args)
    kind, text = ("domain", args.domain) if args.domain else ("cirr", args.text)
    if text is None:
        raise ValueError("Give the modification with --text \"...\" (or a target domain with --domain cartoon).")
    top = cir.retrieve(method, args.image, text, args.gallery, k=args.k, kind=kind, cache_dir=args.cache_dir,
                       skip_bad_images=args.skip_bad_images)
    if args.grid is not None:
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
    gts = captioning.load_caption_json(args.gts, kind="gts")
    res = captioning.load_caption_json(args.res, kind="res")
    if args.groups:
        groups = json.loads(Path(args.groups).read_text())
        scores = captioning.score_captions_by_group(gts, res, groups, spice=args.spice, allow_empty=args.allow_empty)
    else:
        scores = captioning.score_captions(gts, res, spice=args.spice, allow_empty=args.allow_empty)
    _print_json(scores)


# ----------------------------------------------------------------------------------------------------------------------
# data: the data_scripts/ of the repository, shipped inside the package as idclab/data_scripts/
# ----------------------------------------------------------------------------------------------------------------------

# dataset name (as `idclab train --dataset` and `eval cir --benchmark` spell it) -> data_scripts/<script>.py
DATA_SCRIPTS = {"clevr": "clevr_change", "spot": "spot_the_diff", "ier": "image_editing_request",
                "fashioniq": "fashioniq", "cirr": "cirr", "circo": "circo", "imagenet_r": "imagenet_r",
                "coco": "coco_composition", "folder": "image_folder"}
DATA_ACTIONS = ("download", "prepare", "verify", "sort-val")


def data_scripts_dir() -> Path:
    """The data_scripts/ folder: inside the installed package (pip install) or beside it (a checkout)."""
    for folder in (PACKAGE_DIR / "data_scripts", PACKAGE_DIR.parent / "data_scripts"):
        if (folder / "_common.py").is_file():
            return folder
    raise FileNotFoundError(f"No data_scripts/ in {PACKAGE_DIR} or beside it: this idclab was installed without them. "
                            f"Reinstall it from the repository or a wheel built from it (pip install idclab @ git+...).")


def cmd_data(args) -> None:
    """Run data_scripts/<script>.py ACTION ARGS... with this Python; its exit code becomes ours."""
    script = data_scripts_dir() / f"{DATA_SCRIPTS.get(args.dataset, args.dataset)}.py"
    code = subprocess.call([sys.executable, str(script), args.action, *args.args])
    if code:
        raise SystemExit(code)


# ----------------------------------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idclab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    shapes_cmd = sub.add_parser("shapes", help="the Shapes toy world").add_subparsers(dest="action", required=True)
    exp = shapes_cmd.add_parser("export", help="write Shapes data in CLEVR-Change (idc) or CIRR (cir) layout")
    exp.add_argument("--task", choices=["idc", "cir"], required=True)
    exp.add_argument("--split", choices=["train", "val", "test"], required=True)
    exp.add_argument("--n", type=int, required=True)
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--size", type=int, default=64, help="image side in pixels (224: the paper backbones' input)")
    exp.set_defaults(func=cmd_shapes_export)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    for what in METHODS:
        add_train_parser(train, what)
    add_ablate_parser(sub)

    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    ec = ev.add_parser("clip", help="text<->image retrieval on held-out Shapes scenes")
    ec.add_argument("--model", default="shapes-clip", help="'shapes-clip' or a run of `idclab train clip`")
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

    def retrieval_method_args(p) -> None:
        p.add_argument("--method", choices=["pic2word", "combiner", "raw_sum", "image", "text", "sum"], required=True,
                       help="raw_sum: the Combiner's stage-1 query norm(image + text) on raw features; sum: the "
                            "zero-shot baseline norm(norm(image) + norm(text))")
        p.add_argument("--checkpoint", type=Path, default=None,
                       help="a Pic2Word or Combiner run folder (its CLIP also serves the baselines), or CLIP4Cir's "
                            "released Combiner file (recognised by its 'Combiner' entry)")
        p.add_argument("--clip-checkpoint", type=Path, default=None,
                       help="CLIP4Cir's released fine-tuned CLIP file (its 'CLIP' entry) for a released --checkpoint; "
                            "without it the released Combiner runs on --backbone with --pretrained weights")
        p.add_argument("--trust-checkpoint", action="store_true",
                       help="allow a released file that holds pickled Python objects (loading it can run code: only "
                            "for files from a source you trust)")
        p.add_argument("--backbone", default=None,
                       help="CLIP for the baselines without --checkpoint (default shapes-clip), or the architecture "
                            "of a released checkpoint (default RN50x4-quickgelu)")
        p.add_argument("--pretrained", default=None, help="open_clip weights tag for --backbone, e.g. openai")
        p.add_argument("--preprocess", choices=["center_crop", "squash", "target_pad"], default="center_crop",
                       help="image preprocessing of the baselines")
        p.add_argument("--cache-dir", type=Path, default=None, help="keep gallery features here between runs")

    ecir = ev.add_parser("cir", help="composed image retrieval: a method beside the image / text / sum baselines")
    retrieval_method_args(ecir)
    ecir.add_argument("--benchmark", choices=list(cir.BENCHMARKS), default="shapes")
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
    rt.add_argument("--skip-bad-images", action="store_true",
                    help="leave out gallery files that cannot be read (with a warning listing them) instead of stopping")
    rt.add_argument("--grid", type=Path, default=None, help="also write the query and its top-k as a PNG grid")
    rt.set_defaults(func=cmd_retrieve)

    sc = sub.add_parser("score-captions", help="caption metrics with pycocoevalcap")
    sc.add_argument("gts", type=Path, help="JSON: id -> [references] (or COCO annotations format)")
    sc.add_argument("res", type=Path, help="JSON: id -> caption or [caption] (or COCO results list)")
    sc.add_argument("--groups", type=Path, default=None, help="JSON: id -> group (e.g. change type); scores per group")
    sc.add_argument("--spice", action="store_true", help="also SPICE (needs a one-time Stanford CoreNLP download)")
    sc.add_argument("--allow-empty", action="store_true", help="score empty hypotheses as empty captions (score 0)")
    sc.set_defaults(func=cmd_score_captions)

    names = sorted(set(DATA_SCRIPTS) | set(DATA_SCRIPTS.values()))
    da = sub.add_parser("data", help="download, prepare or verify a dataset of the papers (data_scripts/)",
                        description="Runs data_scripts/<dataset>.py ACTION ... (shipped with the package). Datasets: "
                                    + ", ".join(f"{k} ({v}.py)" for k, v in DATA_SCRIPTS.items())
                                    + ". `idclab data ACTION DATASET --help` lists the options of one script.")
    da.add_argument("action", choices=DATA_ACTIONS, help="sort-val: imagenet_r only; prepare: not every dataset")
    da.add_argument("dataset", choices=names, metavar="DATASET", help=", ".join(DATA_SCRIPTS))
    da.add_argument("args", nargs=argparse.REMAINDER, help="the script's options, e.g. --root DIR")
    da.set_defaults(func=cmd_data)
    return parser


def _raised_by_idclab(err: BaseException) -> bool:
    """Whether the innermost frame of the error is idclab's own code (its messages name the fix)."""
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.command == "train":
            words = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--overwrite", "--resume")]
            again = "idclab " + " ".join(shlex.quote(str(a)) for a in words)
            if not any(Path(args.out).glob("*/resume.pt")):
                raise SystemExit(f"interrupted before anything was saved in {args.out}; start again with:\n  {again}"
                                 ) from None
            raise SystemExit(f"interrupted; the run is saved in {args.out}. Continue it with:\n  {again} --resume"
                             ) from None
        raise
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as err:
        # idclab's own errors name the fix: one line. Anything raised inside torch, open_clip or another library
        # (CUDA out of memory, NCCL, a bug) keeps its traceback.
        if not _raised_by_idclab(err):
            raise
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
