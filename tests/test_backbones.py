"""idclab.backbones: names, the QuickGELU trap, tokenising, images, the ViT token sequence and pseudo-token text encoding."""

import ast
import dataclasses
import inspect
import types
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from idclab import backbones as bb


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return bb.load_clip("idc-tiny")


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"Unknown model name 'ViT-B-23'.*Did you mean.*ViT-B-32"):
        bb.load_clip("ViT-B-23")


def test_quickgelu_trap_is_corrected_for_openai_weights():
    with pytest.warns(UserWarning, match="QuickGELU|GELU"):
        assert bb.resolve_model_name("ViT-B-32", "openai") == "ViT-B-32-quickgelu"
    with pytest.warns(UserWarning):
        assert bb.resolve_model_name("ViT-L-14", "openai") == "ViT-L-14-quickgelu"
    assert bb.resolve_model_name("ViT-B-32-quickgelu", "openai") == "ViT-B-32-quickgelu"
    assert bb.resolve_model_name("ViT-B-32", None) == "ViT-B-32"  # random init: the user asked for GELU


def test_quickgelu_variant_really_uses_quickgelu():
    # Build with random weights (offline) and look at the activation actually inside the MLPs.
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    acts = {type(m).__name__ for m in model.visual.transformer.resblocks[0].mlp.modules()}
    assert "QuickGELU" in acts


def test_pretrained_refused_for_random_configs():
    with pytest.raises(ValueError, match="no pretrained"):
        bb.load_clip("idc-tiny", pretrained="openai")


def test_tokenize_truncates_keeping_eot_and_pads_to_context():
    long = " ".join(["red cube"] * 40)
    ids = bb.tokenize([long, "a dog"], context_length=77, max_words=32)
    assert ids.shape == (2, 77)
    assert ids[0, 31] == 49407 and (ids[0, 32:] == 0).all()  # EOT kept as the 32nd token, zeros after
    assert ids[1, :4].tolist() == [49406, bb.token_id("a"), bb.token_id("dog"), 49407]
    with pytest.raises(ValueError, match="max_words"):
        bb.tokenize("x", context_length=32, max_words=40)


def test_token_id_refuses_multi_token_words():
    assert bb.token_id("*") == 265
    with pytest.raises(ValueError, match="not a single CLIP token"):
        bb.token_id("unbelievably-long-compound")


def test_32_token_eot_feature_equals_sliced_model(tiny):
    # CLIP4IDC slices the positional embedding to 32 rows; we pad 32-token captions to 77. Same EOT feature.
    text = ["the small red cube has moved to the left of the large metal sphere"]
    ids77 = bb.tokenize(text, context_length=77, max_words=32)
    with torch.no_grad():
        ours = tiny.encode_text(ids77)
        ids32 = ids77[:, :32]
        x = tiny.token_embedding(ids32) + tiny.positional_embedding[:32]
        mask = torch.full((32, 32), float("-inf")).triu_(1)
        x = tiny.transformer(x, attn_mask=mask)
        x = tiny.ln_final(x)
        ref = x[torch.arange(1), ids32.argmax(dim=-1)] @ tiny.text_projection
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_image_tokens_class_token_equals_encode_image(tiny):
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens = bb.image_tokens(tiny, pixels)
        pooled = tiny.encode_image(pixels)
    assert tokens.shape == (3, 1 + 8 * 8, 128)
    torch.testing.assert_close(tokens[:, 0], pooled, atol=1e-5, rtol=1e-5)


def test_split_vit_equals_whole_vit(tiny):
    # Running blocks 0..k then k..end is the same as running all of them: the basis of CLIP4IDC's intra/inter split.
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = bb.vit_embed(tiny, pixels)
        split = bb.vit_blocks(tiny, bb.vit_blocks(tiny, x, 0, 2), 2)
        whole = bb.vit_blocks(tiny, x)
        tower = bb.vit_blocks(bb.image_tower(tiny), x)  # the image tower alone is accepted too
    torch.testing.assert_close(split, whole)
    torch.testing.assert_close(tower, whole)


def test_pseudo_token_reproduces_real_word_and_passes_gradients(tiny):
    # "a photo of *" with * replaced by the embedding of "dog" == "a photo of dog", exactly.
    prompt = bb.tokenize(["a photo of *"], context_length=77)
    real = bb.tokenize(["a photo of dog"], context_length=77)
    dog = tiny.token_embedding.weight[bb.token_id("dog")].detach().clone()[None].requires_grad_(True)  # [1, width]
    feat = bb.encode_text_with_pseudo_tokens(tiny, prompt, dog)
    with torch.no_grad():
        expected = bb.encode_text(tiny, real)
        stock = tiny.encode_text(real)
    assert torch.equal(feat.detach(), expected)
    torch.testing.assert_close(feat.detach(), stock, rtol=1e-5, atol=1e-5)  # the trimmed encoder = the stock one
    feat.sum().backward()
    assert dog.grad is not None and dog.grad.abs().sum() > 0
    # The hook is removed afterwards: a plain encode is unaffected.
    with torch.no_grad():
        assert torch.equal(bb.encode_text(tiny, real), expected)


def test_trimmed_text_encoder_matches_stock_encode_text(tiny):
    # Positions after the last EOT cannot change any EOT feature (causal mask), so cutting them off is exact up to
    # float rounding, for rows of different lengths and a row that fills the whole context.
    long = " ".join(["red"] * 80)  # truncated to the context: EOT at the last position
    tokens = bb.tokenize(["a photo of a dog", "a cube", long], context_length=77)
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(tiny, tokens), tiny.encode_text(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bb.encode_text(tiny, tokens[:2], normalize=True),
                                   tiny.encode_text(tokens[:2], normalize=True), rtol=1e-5, atol=1e-5)


def test_pseudo_token_per_sample_and_missing_placeholder(tiny):
    prompts = bb.tokenize(["a photo of *", "a sketch of * , red"], context_length=77)
    vecs = torch.randn(2, 128)
    out = bb.encode_text_with_pseudo_tokens(tiny, prompts, vecs)
    assert out.shape == (2, 128) and torch.isfinite(out).all()
    # Row 0 depends only on vecs[0].
    vecs2 = vecs.clone()
    vecs2[1] += 1.0
    out2 = bb.encode_text_with_pseudo_tokens(tiny, prompts, vecs2)
    assert torch.equal(out[0], out2[0]) and not torch.equal(out[1], out2[1])
    with pytest.raises(ValueError, match="contain no placeholder"):
        bb.encode_text_with_pseudo_tokens(tiny, bb.tokenize(["a photo of a dog"]), vecs[:1])


def test_open_clip_encode_text_internals_have_not_drifted(tiny):
    # Our hook relies on encode_text calling token_embedding on the ids; if open_clip changes that, this fails.
    seen = []
    h = tiny.token_embedding.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    ids = bb.tokenize(["a cube"])
    with torch.no_grad():
        tiny.encode_text(ids)
    h.remove()
    assert len(seen) == 1 and torch.equal(seen[0], ids)


def test_load_image_conversions(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent -> white background
    rgba[0, 0, 3] = 255
    out = bb.load_image(rgba)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert out[5, 5].tolist() == [255, 255, 255] and out[0, 0].tolist() == [200, 0, 0]
    gray = np.full((8, 8), 77, np.uint8)
    assert bb.load_image(gray)[3, 3].tolist() == [77, 77, 77]
    path = tmp_path / "g.png"
    Image.fromarray(gray, mode="L").save(path)
    assert bb.load_image(path).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="uint8"):
        bb.load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="channels-first"):
        bb.load_image(np.zeros((3, 40, 50), np.uint8).transpose(1, 2, 0)[:, :, :2])
    with pytest.raises(FileNotFoundError):
        bb.load_image(tmp_path / "missing.png")


def test_to_pixels_resizes_odd_sizes_and_normalises():
    odd = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    gray = np.full((64, 64), 128, np.uint8)
    x = bb.to_pixels([odd, gray], 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    expected = (128 / 255 - bb.MEAN) / bb.STD
    torch.testing.assert_close(x[1, :, 10, 10], expected)
    batch = np.zeros((4, 64, 64, 3), np.uint8)
    assert bb.to_pixels(batch, 64).shape == (4, 3, 64, 64)
    with pytest.raises(ValueError, match="no images"):
        bb.to_pixels([], 64)


def test_shapes_clip_loads_offline_and_reproduces_its_recorded_figures():
    import json
    import subprocess
    import sys
    import time

    start = time.time()
    model = bb.load_clip("shapes-clip")
    assert time.time() - start < 5.0  # loading is instant: no download, no training
    assert bb.SHAPES_CLIP_PATH.stat().st_size <= 10 * 2**20
    record = bb.shapes_clip_record()
    assert record["command"].startswith("idclab train clip --profile toy")
    proc = subprocess.run([sys.executable, "-m", "idclab.cli", "eval", "clip", "--model", "shapes-clip"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout)
    for key in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "gallery_size"):
        assert measured[key] == record["metrics"][key], key
    # Trained rows come from the asset; unseen ones are a fixed N(0, 0.02) draw, the same on every load.
    table = model.token_embedding.weight
    asset = torch.load(bb.SHAPES_CLIP_PATH, weights_only=True)
    assert torch.equal(table[asset["token_ids"]], asset["token_rows"]) and bb.token_id("cube") in asset["token_ids"]
    unseen = torch.ones(table.shape[0], dtype=torch.bool)
    unseen[asset["token_ids"]] = False
    assert bb.token_id("dog") not in asset["token_ids"] and abs(table[unseen].std().item() - 0.02) < 1e-3
    assert torch.equal(bb.load_clip("shapes-clip").token_embedding.weight, table)


# ----------------------------------------------------------------------------------------------------------------------
# What the models read from a CLIP: sizes, parts, the per-block attention
# ----------------------------------------------------------------------------------------------------------------------


def tiny_resnet_clip() -> open_clip.CLIP:
    """An OpenAI-style CLIP with a (very small) ResNet image tower, random weights: the Combiner's RN50x4 in miniature."""
    return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1), width=16, head_width=8),
                          text_cfg=dict(context_length=16, vocab_size=49408, width=24, heads=2, layers=1))


@pytest.mark.parametrize("name", list(bb.TINY_CONFIGS))
def test_clip_dims_of_the_tiny_configs(name):
    cfg = bb.TINY_CONFIGS[name]
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    dims = bb.clip_dims(bb.load_clip(name))
    assert dims == bb.ClipDims(
        tower="vit", embed_dim=cfg["embed_dim"], image_size=vision["image_size"], vision_width=vision["width"],
        vision_blocks=vision["layers"], tokens_per_image=1 + (vision["image_size"] // vision["patch_size"]) ** 2,
        text_width=text["width"], text_blocks=text["layers"], context_length=text["context_length"],
        vocab_size=text["vocab_size"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        dims.embed_dim = 1


def test_clip_dims_of_a_resnet_tower_and_refusals():
    model = tiny_resnet_clip()
    dims = bb.clip_dims(model)
    assert (dims.tower, dims.embed_dim, dims.image_size, dims.text_width, dims.text_blocks) == ("resnet", 32, 64, 24, 1)
    assert dims.vision_width is dims.vision_blocks is dims.tokens_per_image is None  # no token sequence
    assert (dims.context_length, dims.vocab_size) == (16, 49408)
    with pytest.raises(TypeError, match="ViT image tower"):
        bb.vit_embed(model, torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match="load_clip"):
        bb.clip_dims(torch.nn.Linear(2, 2))


def test_vit_block_attention_is_the_blocks_own_softmax(tiny):
    torch.manual_seed(0)
    x = bb.vit_embed(tiny, torch.randn(2, 3, 64, 64)).detach()  # [2, 65, 128]
    block = tiny.visual.transformer.resblocks[1]
    with torch.no_grad():
        out, weights = bb.vit_block_attention(tiny, x, 1)
        # By hand: softmax(q k^T / sqrt(d)) per head on ln_1(x), averaged over the heads.
        q, k, _ = (block.ln_1(x) @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
        q, k = (t.unflatten(-1, (block.attn.num_heads, -1)).transpose(1, 2) for t in (q, k))  # [B, heads, N, d]
        manual = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1).mean(1)  # [B, N, N]
        plain = bb.vit_blocks(tiny, x, 1, 2)
    assert weights.shape == (2, 65, 65)
    torch.testing.assert_close(weights, manual)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)  # the block's output is unchanged
    assert not block.attn._forward_hooks and not block.attn._forward_pre_hooks  # hooks removed afterwards
    with pytest.raises(IndexError, match="blocks 0 to 3"):
        bb.vit_block_attention(tiny, x, 4)


@pytest.mark.parametrize("make", [lambda: bb.load_clip("idc-micro"), tiny_resnet_clip], ids=["vit", "resnet"])
def test_clip_part_names_every_parameter_and_buffer(make):
    model = make()
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    parts = {bb.clip_part(n) for n in names}
    assert parts == set(bb.CLIP_PARTS)
    assert bb.clip_part("visual.conv1.weight") == "visual" and bb.clip_part("ln_final.bias") == "text"
    assert bb.clip_part("token_embedding.weight") == "token_embedding" and bb.clip_part("logit_scale") == "logit_scale"
    with pytest.raises(ValueError, match="clip_part"):
        bb.clip_part("text.transformer.resblocks.0.ln_1.weight")  # CustomTextCLIP's layout: not an inline text tower


def test_accessors_return_the_modules_themselves(tiny):
    assert bb.token_embedding(tiny) is tiny.token_embedding
    assert bb.text_positional_embedding(tiny) is tiny.positional_embedding
    assert bb.logit_scale(tiny) is tiny.logit_scale
    assert bb.image_tower(tiny) is tiny.visual


def test_parameter_names_in_model_configs_exist():
    # CLIP4IDC's configs freeze CLIP parts by parameter-name prefix; a renamed parameter must fail here, not silently.
    from idclab.models import clip4idc

    names = [n for n, _ in bb.load_clip("idc-micro").named_parameters()]
    for prefix in (*clip4idc.FROZEN_CLIP_PARTS, *clip4idc.TEXT_TOWER):
        assert any(n == prefix or n.startswith(prefix + ".") for n in names), (
            f"open_clip drift: no CLIP parameter is named {prefix!r} any more (clip4idc.FROZEN_CLIP_PARTS / TEXT_TOWER)")


# ----------------------------------------------------------------------------------------------------------------------
# Drift: every open_clip internal idclab touches, checked on the tiny configs
# ----------------------------------------------------------------------------------------------------------------------

# open_clip's module-level names that backbones.py uses.
OPEN_CLIP_NAMES = ("CLIP", "create_model", "list_models", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD",
                   "tokenizer.SimpleTokenizer", "transformer.VisionTransformer", "transformer.text_global_pool",
                   "modified_resnet.ModifiedResNet")

# Every attribute of an OpenAI-style open_clip CLIP that backbones.py reads, with the type it relies on.
Module, Parameter = torch.nn.Module, torch.nn.Parameter
CLIP_INTERNALS = {
    # text tower (tokenize, encode_text, the pseudo-token hook, clip_dims, the captioner's tied tables)
    "token_embedding": torch.nn.Embedding,
    "positional_embedding": Parameter,
    "transformer": open_clip.transformer.Transformer,
    "transformer.resblocks": torch.nn.ModuleList,
    "transformer.batch_first": bool,
    "transformer.get_cast_dtype": types.MethodType,
    "ln_final": Module,
    "text_projection": Parameter,
    "text_pool_type": str,
    "attn_mask": torch.Tensor,
    "context_length": int,
    "logit_scale": Parameter,
    # image tower (image_size, vit_embed / vit_blocks / vit_block_attention / vit_project, clip_dims)
    "visual": open_clip.transformer.VisionTransformer,
    "visual.image_size": (int, tuple),
    "visual.conv1": torch.nn.Conv2d,
    "visual.class_embedding": Parameter,
    "visual.positional_embedding": Parameter,
    "visual.patch_dropout": Module,
    "visual.ln_pre": Module,
    "visual.transformer": open_clip.transformer.Transformer,
    "visual.transformer.width": int,
    "visual.transformer.batch_first": bool,
    "visual.transformer.resblocks": torch.nn.ModuleList,
    "visual.transformer.resblocks.0.attn": torch.nn.MultiheadAttention,
    "visual.ln_post": Module,
    "visual.proj": Parameter,
    "visual.attn_pool": type(None),
    "visual.pool_type": str,
}


def _lookup(obj, path: str):
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def test_open_clip_module_names_have_not_drifted():
    moved = []
    for path in OPEN_CLIP_NAMES:
        try:
            _lookup(open_clip, path)
        except AttributeError:
            moved.append(path)
    assert not moved, (f"open_clip drift: open_clip.{', open_clip.'.join(moved)} no longer exist(s); "
                       "idclab/backbones.py uses them -- update it for this open_clip version.")


@pytest.mark.parametrize("name", list(bb.TINY_CONFIGS))
def test_open_clip_internals_have_not_drifted(name):
    model = bb.load_clip(name)
    moved = []
    for path, expected in CLIP_INTERNALS.items():
        try:
            value = _lookup(model, path)
        except (AttributeError, IndexError):
            moved.append(f"model.{path} is gone")
            continue
        if not isinstance(value, expected):
            moved.append(f"model.{path} is a {type(value).__name__}, not a {getattr(expected, '__name__', expected)}")
    assert not moved, ("open_clip drift: " + "; ".join(moved) + ". idclab/backbones.py reads these -- update it "
                       "(it is the only module that touches open_clip internals).")
    # The ResNet tower: the one attribute read from it.
    assert isinstance(tiny_resnet_clip().visual.image_size, (int, tuple)), "open_clip drift: ModifiedResNet.image_size"


def test_open_clip_block_structure_has_not_drifted(tiny):
    # vit_block_attention reports attn's weights on ln_1(x): true of a pre-LN residual block, checked here.
    block = tiny.visual.transformer.resblocks[0]
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        h = block.ln_1(x)
        y = x + block.ls_1(block.attn(h, h, h, need_weights=False)[0])
        by_hand = y + block.ls_2(block.mlp(block.ln_2(y)))
        torch.testing.assert_close(block(x), by_hand, msg=lambda m: "open_clip drift: a ViT block is no longer "
                                   "x + attn(ln_1(x)), then + mlp(ln_2(.)); revisit backbones.vit_block_attention. " + m)
    # The attention module is asked for head-averaged weights by keyword, and must honour it.
    params = inspect.signature(torch.nn.MultiheadAttention.forward).parameters
    assert {"need_weights", "average_attn_weights", "attn_mask"} <= set(params), \
        "torch drift: nn.MultiheadAttention.forward lost need_weights / average_attn_weights / attn_mask"
    text_forward = inspect.signature(type(tiny.transformer).forward).parameters
    assert "attn_mask" in text_forward, "open_clip drift: Transformer.forward(x, attn_mask=...) changed (encode_text)"
    pool = inspect.signature(open_clip.transformer.text_global_pool).parameters
    assert list(pool)[:3] == ["x", "text", "pool_type"], "open_clip drift: text_global_pool(x, text, pool_type) changed"


def test_open_clip_normalisation_constants_have_not_drifted():
    torch.testing.assert_close(bb.MEAN, torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    torch.testing.assert_close(bb.STD, torch.tensor([0.26862954, 0.26130258, 0.27577711]))


# ----------------------------------------------------------------------------------------------------------------------
# Only backbones.py touches open_clip
# ----------------------------------------------------------------------------------------------------------------------

# Attributes of an open_clip CLIP (or of its towers and blocks); read anywhere else in idclab, they are a leak.
OPEN_CLIP_ATTRIBUTES = {"visual", "transformer", "resblocks", "class_embedding", "positional_embedding",
                        "token_embedding", "text_projection", "ln_final", "logit_scale", "context_length", "vocab_size",
                        "attn_mask", "text_pool_type", "conv1", "ln_pre", "ln_post", "proj", "attn_pool",
                        "patch_dropout", "batch_first", "ln_1", "attn"}
# Reads of these names that are not open_clip's: a module's own attributes (self.), configs (cfg. / config.),
# backbones' own functions (backbones.token_embedding, backbones.logit_scale) and ClipDims fields (dims. or
# backbones.clip_dims(...).).
NOT_OPEN_CLIP = {"self", "cfg", "config", "backbones", "dims"}
# Reads that remain outside backbones.py, each with why. Keyed by (file, function).
KNOWN_LEAKS: dict[tuple[str, str], str] = {}


class _OpenClipReads(ast.NodeVisitor):
    """Collects (function, line, what) for every open_clip import or name and every CLIP attribute read."""

    def __init__(self):
        self.scope, self.found = [], []

    def _enter(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

    def _add(self, node, what):
        self.found.append((".".join(self.scope), node.lineno, what))

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] == "open_clip":
                self._add(node, f"import {alias.name}")

    def visit_ImportFrom(self, node):
        if (node.module or "").split(".")[0] == "open_clip":
            self._add(node, f"from {node.module} import ...")

    def visit_Name(self, node):
        if node.id == "open_clip":
            self._add(node, "open_clip")

    def visit_Attribute(self, node):
        value = node.value
        owner = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else None
        from_dims = isinstance(value, ast.Call) and getattr(value.func, "attr", None) == "clip_dims"
        if node.attr in OPEN_CLIP_ATTRIBUTES and owner not in NOT_OPEN_CLIP and not from_dims:
            self._add(node, f"{ast.unparse(value)}.{node.attr}")
        self.generic_visit(node)


def test_only_backbones_touches_open_clip():
    root = Path(bb.__file__).parent
    leaks, known = [], set()
    for path in sorted(root.rglob("*.py")):
        if path == Path(bb.__file__):
            continue
        rel = path.relative_to(root.parent).as_posix()
        reads = _OpenClipReads()
        reads.visit(ast.parse(path.read_text(), filename=rel))
        for function, line, what in reads.found:
            if (rel, function) in KNOWN_LEAKS:
                known.add((rel, function))
                continue
            leaks.append(f"{rel}:{line} ({function or 'module'}): {what}")
    assert not leaks, ("open_clip is read outside idclab/backbones.py -- use backbones.clip_dims / clip_part / "
                       "token_embedding / logit_scale / image_tower / vit_* instead:\n  " + "\n  ".join(leaks))
    fixed = sorted(set(KNOWN_LEAKS) - known)
    assert not fixed, f"These no longer read open_clip: delete them from KNOWN_LEAKS in tests/test_backbones.py: {fixed}"


def test_the_open_clip_scan_finds_leaks():
    source = ("import open_clip\n"
              "def f(clip, self):\n"
              "    n = len(clip.visual.transformer.resblocks)\n"
              "    w = self.clip.token_embedding.weight.shape[1]\n"
              "    ok = self.context_length + backbones.clip_dims(clip).context_length + dims.vocab_size\n")
    reads = _OpenClipReads()
    reads.visit(ast.parse(source))
    assert [what for _, _, what in reads.found] == [
        "import open_clip", "clip.visual.transformer.resblocks", "clip.visual.transformer", "clip.visual",
        "self.clip.token_embedding"]
