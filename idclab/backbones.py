"""The one door to open_clip: loading CLIP models, tokenising, preparing images, and the CLIP internals the papers need.

Every other idclab module talks to CLIP through this file, so an open_clip upgrade that moves an internal breaks here
(and in ``tests/test_backbones.py``) and nowhere else.

What lives here, top-down:

* model names: open_clip names (``ViT-B-32-quickgelu``...), the tiny test config ``idc-tiny`` and the shipped
  toy-world model ``shapes-clip``; :func:`load_clip` refuses unknown names and corrects the QuickGELU trap;
* what the models read from a loaded CLIP: its sizes (:func:`clip_dims`), the part a parameter belongs to
  (:func:`clip_part`), and the few modules a method ties to or trains (:func:`token_embedding`,
  :func:`text_positional_embedding`, :func:`logit_scale`, :func:`image_tower`);
* text: :func:`tokenize` to a maximum number of words, padded to the model's context (CLIP4IDC's ``max_words=32``);
* images: :func:`load_image` and :func:`to_pixels` (uint8 HWC arrays, PIL images or files -> normalised tensors),
  with documented conversions for RGBA, grayscale and odd-sized images;
* the visual tower's token sequence, split into :func:`vit_embed` -> :func:`vit_blocks` -> :func:`vit_project`
  (CLIP4IDC runs the first blocks per image and the rest on the concatenated pair), and :func:`vit_block_attention`
  for the attention maps of one block;
* text encoding with pseudo-word tokens, :func:`encode_text_with_pseudo_tokens` (Pic2Word): the embedding of a
  placeholder token ``*`` is replaced by given vectors through a forward hook on ``token_embedding``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from idclab.images import as_rgb_array, read_image

__all__ = [
    "SHAPES_CLIP",
    "TINY_CONFIGS",
    "PLACEHOLDER",
    "available_models",
    "resolve_model_name",
    "load_clip",
    "ClipDims",
    "clip_dims",
    "CLIP_PARTS",
    "clip_part",
    "token_embedding",
    "text_positional_embedding",
    "logit_scale",
    "image_tower",
    "get_tokenizer",
    "tokenize",
    "token_id",
    "image_size",
    "load_image",
    "to_pixels",
    "RESIZE_MODES",
    "vit_embed",
    "vit_blocks",
    "vit_project",
    "vit_block_attention",
    "image_tokens",
    "encode_text",
    "encode_text_with_pseudo_tokens",
    "pseudo_token_hook",
]

# ----------------------------------------------------------------------------------------------------------------------
# Model names
# ----------------------------------------------------------------------------------------------------------------------

SHAPES_CLIP = "shapes-clip"
SHAPES_CLIP_PATH = Path(__file__).parent / "assets" / "shapes_clip.pt"
UNTRAINED_ROW_STD, UNTRAINED_ROW_SEED = 0.02, 49408  # shapes-clip's token rows for words it never saw

# Tiny architectures built with random weights, for tests and for the smoke profile. Vocabulary stays at 49,408 so
# the stock CLIP tokenizer (ids up to 49,407) works unchanged.
TINY_CONFIGS: dict[str, dict] = {
    # The "idc-tiny" test config: 7.99 M parameters, 6.3 M of them token embeddings (measured when it was chosen).
    "idc-tiny": dict(
        embed_dim=128,
        vision_cfg=dict(image_size=64, layers=4, width=128, head_width=32, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=4, layers=4),
    ),
    # Even smaller, for unit tests that only check mechanics.
    "idc-micro": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
        text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=2),
    ),
    # The architecture of shapes-clip (the shipped weights are loaded by name "shapes-clip"; this name gives the same
    # architecture with random weights, which is what `idclab train clip` starts from). A 64-token context holds the
    # longest Shapes scene description (<= 60 tokens).
    "shapes-clip-arch": dict(
        embed_dim=128,
        vision_cfg=dict(image_size=64, layers=4, width=128, head_width=32, patch_size=8),
        text_cfg=dict(context_length=64, vocab_size=49408, width=128, heads=4, layers=4),
    ),
}

PLACEHOLDER = "*"  # Pic2Word's pseudo-word; BPE id 265 ("*</w>")


def available_models() -> list[str]:
    """Every name :func:`load_clip` accepts: idclab's own, then open_clip's."""
    return [SHAPES_CLIP, *TINY_CONFIGS, *open_clip.list_models()]


def resolve_model_name(name: str, pretrained: str | None) -> str:
    """Return the model name to build, correcting the QuickGELU trap.

    OpenAI's CLIP weights were trained with QuickGELU. In open_clip 3.3, ``ViT-B-32`` + ``pretrained="openai"`` builds
    a GELU model, loads the weights into it and only warns -- a quietly different network. We build the
    ``-quickgelu`` variant instead and say so.
    """
    if name in (SHAPES_CLIP, *TINY_CONFIGS):
        return name
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, available_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown model name {name!r}.{hint} Use 'shapes-clip' (the toy world), one of {list(TINY_CONFIGS)}, or an "
            "open_clip name such as 'ViT-B-32-quickgelu' (see idclab.backbones.available_models())."
        )
    if pretrained == "openai" and not name.endswith("-quickgelu") and f"{name}-quickgelu" in known:
        warnings.warn(
            f"{name!r} with pretrained='openai' would build a GELU network for QuickGELU weights; building "
            f"{name + '-quickgelu'!r} instead. Pass that name to silence this warning.",
            stacklevel=3,
        )
        return f"{name}-quickgelu"
    return name


def load_clip(
    name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu", cache_dir: str | None = None
) -> open_clip.CLIP:
    """Build a CLIP model by name and return it in eval mode.

    Args:
        name: ``"shapes-clip"`` (shipped toy-world weights, loads offline and instantly), a tiny config from
            :data:`TINY_CONFIGS` (random weights from a fixed seed), or an open_clip model name.
        pretrained: open_clip weights tag (e.g. ``"openai"``) or a checkpoint path, for open_clip names only.
        device: where to put the model.
        cache_dir: where open_clip keeps downloaded weights (e.g. a Google Drive folder on Colab).
    """
    name = resolve_model_name(name, pretrained)
    if name == SHAPES_CLIP:
        if pretrained is not None:
            raise ValueError("'shapes-clip' carries its own weights; call load_clip('shapes-clip') without pretrained.")
        model = load_shapes_clip_file(SHAPES_CLIP_PATH)
    elif name in TINY_CONFIGS:
        if pretrained is not None:
            raise ValueError(f"{name!r} is a random-weight test config; it has no pretrained weights.")
        with torch.random.fork_rng(devices=[]):  # random, but the same weights every time: a checkpoint that keeps
            torch.manual_seed(0)  # only what was trained (Pic2Word's mapping) can rebuild the rest
            model = open_clip.CLIP(**TINY_CONFIGS[name])
    else:
        model = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir)
    model.idclab_name = name  # recorded in checkpoints so a checkpoint of another backbone is refused
    return model.to(device).eval()


def build_clip_from_config(model_cfg: dict) -> open_clip.CLIP:
    """Build an open_clip ``CLIP`` from a plain config dict (as stored in idclab checkpoints)."""
    return open_clip.CLIP(**model_cfg)


def load_shapes_clip_file(path: str | Path) -> open_clip.CLIP:
    """Load shapes-clip weights from an asset file (``load_clip("shapes-clip")`` reads the shipped one).

    To stay small (the token table alone would be 25 MB), the asset stores the full weights except the 49,408-row
    token embedding, of which it keeps only the rows that training ever updated (the Shapes vocabulary plus the
    start/end tokens). The other rows get a fixed random initialisation, N(0, 0.02) as open_clip initialises the
    table, from a seeded generator (the same on every load): shapes-clip never trained those words, but like a real
    CLIP's rare words they stay distinct vectors, so a later stage can learn to read them (CLIP4IDC's captioner
    ties its output layer to this table) instead of all sharing one zero vector.
    """
    if not Path(path).exists():
        raise FileNotFoundError(
            f"The shapes-clip weights are missing ({path}). Reinstall idclab, or recreate them with "
            "`idclab train clip --profile toy` (see the README)."
        )
    asset = torch.load(path, map_location="cpu", weights_only=True)
    model = open_clip.CLIP(**asset["model_cfg"])
    state = dict(asset["state_dict"])
    table = UNTRAINED_ROW_STD * torch.randn(model.token_embedding.weight.shape,
                                            generator=torch.Generator().manual_seed(UNTRAINED_ROW_SEED))
    table[asset["token_ids"]] = asset["token_rows"]
    state["token_embedding.weight"] = table
    model.load_state_dict(state)
    return model


def pack_shapes_clip(model: open_clip.CLIP, model_cfg: dict, token_ids: torch.Tensor, metrics: dict, command: str) -> dict:
    """The inverse of :func:`load_shapes_clip_file`: a dict to ``torch.save`` as the shipped asset."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k != "token_embedding.weight"}
    token_ids = torch.as_tensor(token_ids, dtype=torch.long).unique()
    rows = model.token_embedding.weight.detach().cpu()[token_ids].clone()
    return dict(model_cfg=model_cfg, state_dict=state, token_ids=token_ids, token_rows=rows, metrics=metrics,
                command=command)


def shapes_clip_record() -> dict:
    """The recorded metrics and the reproducing command stored with the shipped shapes-clip weights."""
    asset = torch.load(SHAPES_CLIP_PATH, map_location="cpu", weights_only=True)
    return dict(metrics=asset["metrics"], command=asset["command"], model_cfg=asset["model_cfg"])


def model_config(model: open_clip.CLIP) -> dict:
    """A JSON-able description of the backbone, stored with checkpoints so that a mismatched one is refused later."""
    dims = clip_dims(model)
    return dict(name=getattr(model, "idclab_name", type(model).__name__), embed_dim=dims.embed_dim,
                image_size=dims.image_size, context_length=dims.context_length)


# ----------------------------------------------------------------------------------------------------------------------
# What the models read from a loaded CLIP: sizes, named parts, the modules they tie to
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipDims:
    """The sizes of a loaded CLIP that idclab's models build on; get them with :func:`clip_dims`.

    ViT-B/32 at 224 px: embed_dim 512, vision_width 768, 12 + 12 blocks, 50 tokens per image, context 77, vocabulary
    49,408. A ResNet image tower (``tower == "resnet"``, e.g. RN50x4) has no token sequence: its ``vision_width``,
    ``vision_blocks`` and ``tokens_per_image`` are None.
    """

    tower: str  # "vit" or "resnet"
    embed_dim: int  # D, the joint image-text space (after visual.proj / text_projection)
    image_size: int  # S, the side of the square input in pixels
    vision_width: int | None  # W, the width of the ViT's tokens
    vision_blocks: int | None  # transformer blocks of the ViT
    tokens_per_image: int | None  # T = 1 + grid**2: the class token and the patches
    text_width: int  # the width of the text tower's tokens (= the token table's columns)
    text_blocks: int  # transformer blocks of the text tower
    context_length: int  # positions of the text tower
    vocab_size: int  # rows of the token table (49,408 for CLIP's BPE)


def _check_clip(model: torch.nn.Module) -> None:
    if not isinstance(model, open_clip.CLIP):
        raise TypeError(
            f"idclab needs an open_clip CLIP with its text tower inline (OpenAI-style); got {type(model).__name__}. "
            "Load the backbone with idclab.backbones.load_clip(name) and pick an OpenAI-style architecture "
            "(ViT-*-quickgelu, RN50*-quickgelu, or a config of TINY_CONFIGS)."
        )


def clip_dims(model: open_clip.CLIP) -> ClipDims:
    """The sizes of ``model`` (see :class:`ClipDims`); an image tower other than a ViT or a ResNet is refused."""
    _check_clip(model)
    visual = model.visual
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        tower, width = "vit", int(visual.transformer.width)
        blocks, tokens = len(visual.transformer.resblocks), int(visual.positional_embedding.shape[0])
    elif isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
        tower, width, blocks, tokens = "resnet", None, None, None
    else:
        raise TypeError(f"Unknown image tower {type(visual).__name__}: idclab knows open_clip's VisionTransformer and "
                        "ModifiedResNet.")
    table = model.token_embedding  # nn.Embedding [vocab, text width]
    proj = model.text_projection  # [text width, D] (a Linear in some open_clip configs)
    embed_dim = proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1]
    return ClipDims(tower=tower, embed_dim=int(embed_dim), image_size=image_size(model), vision_width=width,
                    vision_blocks=blocks, tokens_per_image=tokens, text_width=int(table.embedding_dim),
                    text_blocks=len(model.transformer.resblocks), context_length=int(model.context_length),
                    vocab_size=int(table.num_embeddings))


# The parts of a CLIP, as :func:`clip_part` names them. The whole text tower is "token_embedding",
# "positional_embedding" and "text" (its blocks, ln_final and text_projection) together.
CLIP_PARTS = ("visual", "token_embedding", "positional_embedding", "text", "logit_scale")


def clip_part(name: str) -> str:
    """The part of a CLIP that a parameter or buffer belongs to, by its name in ``model.named_parameters()``.

    ``"visual.transformer.resblocks.0.attn.in_proj_weight"`` -> ``"visual"``; ``"token_embedding.weight"`` ->
    ``"token_embedding"``; ``"ln_final.bias"`` -> ``"text"``; ``"logit_scale"`` (and SigLIP's ``logit_bias``) ->
    ``"logit_scale"``. One of :data:`CLIP_PARTS`; an unknown name is an error (open_clip renamed something).
    """
    head = name.split(".")[0]
    if head == "visual":
        return "visual"
    if head in ("token_embedding", "positional_embedding"):
        return head
    if head in ("transformer", "ln_final", "text_projection", "attn_mask"):
        return "text"
    if head in ("logit_scale", "logit_bias"):
        return "logit_scale"
    raise ValueError(f"{name!r} is not a part of an open_clip CLIP that idclab knows ({CLIP_PARTS}); if open_clip "
                     "renamed it, update idclab.backbones.clip_part (tests/test_backbones.py checks every name).")


def token_embedding(model: open_clip.CLIP) -> torch.nn.Embedding:
    """CLIP's token table, the module itself [vocab, text width] (CLIP4IDC's captioner ties its embeddings to it)."""
    _check_clip(model)
    return model.token_embedding


def text_positional_embedding(model: open_clip.CLIP) -> torch.nn.Parameter:
    """The text tower's position table, the Parameter itself: [context_length, text width]."""
    _check_clip(model)
    return model.positional_embedding


def logit_scale(model: open_clip.CLIP) -> torch.nn.Parameter:
    """The learned log inverse temperature, the Parameter itself (scalar): similarities are scaled by its ``exp()``."""
    _check_clip(model)
    return model.logit_scale


def image_tower(model: open_clip.CLIP) -> torch.nn.Module:
    """The image encoder as a module (ViT or ResNet), e.g. to hash its weights; :func:`clip_part` names it "visual"."""
    _check_clip(model)
    return model.visual


# ----------------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    """CLIP's BPE tokenizer (vocabulary 49,408; SOT 49406, EOT 49407, pad 0). Offline: the vocabulary ships in open_clip."""
    return open_clip.tokenizer.SimpleTokenizer()


def token_id(word: str) -> int:
    """The single BPE id of ``word`` (e.g. ``token_id("*") == 265``); error if it splits into several tokens."""
    ids = get_tokenizer().encode(word)
    if len(ids) != 1:
        raise ValueError(f"{word!r} is not a single CLIP token (it encodes to {ids}); choose a one-token word.")
    return ids[0]


def tokenize(texts: str | Sequence[str], *, context_length: int = 77, max_words: int | None = None) -> torch.Tensor:
    """Tokenise to at most ``max_words`` tokens (SOT and EOT included, EOT kept when truncating), padded to ``context_length``.

    CLIP4IDC feeds 32-token captions to a 77-context model; thanks to the causal mask, the EOT feature of the
    32-token sequence padded to 77 is exactly that of the 32-token model the reference slices out. Cutting to an
    explicit ``max_words`` is silent (the caller chose it); a text longer than ``context_length`` itself is cut with a
    warning that says how many tokens were dropped. The ids equal open_clip's tokenizer's.

    Returns:
        LongTensor [N, context_length].
    """
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("tokenize() takes a string or a sequence of strings.")
    explicit = max_words is not None
    max_words = context_length if max_words is None else max_words
    if not 2 <= max_words <= context_length:
        raise ValueError(f"max_words={max_words} must lie in [2, context_length={context_length}].")
    tok = get_tokenizer()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)  # [N, context_length], 0 = padding
    cut = []  # (text index, its tokens without SOT/EOT)
    for i, text in enumerate(texts):
        ids = [tok.sot_token_id] + tok.encode(text) + [tok.eot_token_id]
        if len(ids) > max_words:
            cut.append((i, ids[1:-1]))
            ids = ids[:max_words - 1] + [tok.eot_token_id]
        out[i, :len(ids)] = torch.tensor(ids)
    if cut and not explicit:
        keep = max_words - 2
        detail = "; ".join(f"text {i} lost {len(ids) - keep} of its {len(ids)} tokens "
                           f"({tok.decode(ids[keep:]).strip()[:60]!r}...)" for i, ids in cut[:5])
        warnings.warn(f"{len(cut)} of {len(texts)} texts are longer than the text encoder's context of {max_words} "
                      f"tokens (start and end included) and were cut to their first {keep} tokens: {detail}",
                      stacklevel=2)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN)  # [3]
STD = torch.tensor(open_clip.OPENAI_DATASET_STD)  # [3]


def image_size(model: open_clip.CLIP) -> int:
    """Side of the square input the visual tower expects (positional embeddings are fixed to that grid)."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


# Reading an image (RGBA on white, grayscale copied to RGB, ...) is idclab.images.read_image, which needs no open_clip;
# this is its public name here.
load_image = read_image


RESIZE_MODES = ("squash", "center_crop", "target_pad")
TARGET_PAD_RATIO = 1.25  # CLIP4Cir's TargetPad default (its data_utils.py and CLI)


def to_pixels(images, size: int, *, device: str | torch.device = "cpu", resize: str = "squash") -> torch.Tensor:
    """Images -> the normalised float tensor a CLIP visual tower takes.

    Accepts one image or a sequence (paths, PIL images, uint8 arrays [H, W, C]) or a uint8 array [B, H, W, C].
    Every image goes through :func:`load_image`. An image of another size than ``size`` x ``size`` is brought to it
    by ``resize`` (bicubic everywhere):

    * ``"squash"`` -- resized to the square, aspect ratio not kept, no crop (CLIP4IDC's preprocessing);
    * ``"center_crop"`` -- shorter side resized to ``size``, then the central square (CLIP's own preprocessing,
      Pic2Word's evaluation);
    * ``"target_pad"`` -- an image longer than 1.25 : 1 is first padded with black on its short sides to that ratio,
      then centre-cropped as above (CLIP4Cir's TargetPad, so the crop keeps at least 80 % of the long side).

    Returns:
        float32 [B, 3, size, size], normalised with CLIP's mean and std.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}; choose one of {RESIZE_MODES}.")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = images
    else:
        if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
            images = [images]
        arrays = [load_image(im) for im in images]
        if not arrays:
            raise ValueError("to_pixels() got no images.")
        arrays = [_resize(a, size, resize) for a in arrays]
        batch = np.stack(arrays)
    if batch.dtype != np.uint8:
        raise ValueError(f"Image batches must be uint8 (got {batch.dtype}).")
    if batch.shape[1:3] != (size, size):
        batch = np.stack([_resize(as_rgb_array(a), size, resize) for a in batch])
    elif batch.shape[3] != 3:
        batch = np.stack([as_rgb_array(a) for a in batch])
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)  # [B, 3, S, S]
    return (x - MEAN.to(device)[:, None, None]) / STD.to(device)[:, None, None]


def _resize(a: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    if a.shape[:2] == (size, size):
        return a
    if mode == "squash":
        return np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC))
    if mode == "target_pad":
        a = _target_pad(a, TARGET_PAD_RATIO)
    h, w = a.shape[:2]  # center_crop: shorter side -> size (rounded as torchvision does), then the central square
    nh, nw = (size, max(size, int(size * w / h))) if h <= w else (max(size, int(size * h / w)), size)
    a = np.asarray(Image.fromarray(a).resize((nw, nh), Image.BICUBIC))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return a[top:top + size, left:left + size]


def _target_pad(a: np.ndarray, ratio: float) -> np.ndarray:
    """Pad with black so that long side / short side <= ``ratio`` (unchanged if already so); [H, W, 3] uint8."""
    h, w = a.shape[:2]
    if max(h, w) / min(h, w) < ratio:
        return a
    scaled = max(h, w) / ratio
    hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
    return np.pad(a, ((vp, vp), (hp, hp), (0, 0)))


# ----------------------------------------------------------------------------------------------------------------------
# The visual tower's token sequence (ViT only)
# ----------------------------------------------------------------------------------------------------------------------


def _vit(model: torch.nn.Module) -> open_clip.transformer.VisionTransformer:
    """The ViT image tower of a CLIP (a ViT tower itself is accepted too), checked to be a plain OpenAI-style one."""
    visual = model.visual if isinstance(model, open_clip.CLIP) else model
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise TypeError(f"This needs a ViT image tower; {type(visual).__name__} has no token sequence to split. Use a "
                        "ViT backbone (e.g. ViT-B-32-quickgelu or shapes-clip).")
    if visual.attn_pool is not None or getattr(visual, "final_ln_after_pool", False) or visual.pool_type != "tok":
        raise TypeError("This needs a ViT pooled by its class token (OpenAI-style CLIP); this tower pools otherwise.")
    return visual


def vit_embed(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patchify, prepend the class token, add positions, ``ln_pre``: [B, 3, S, S] -> [B, 1 + grid**2, width].

    ``model``: a CLIP with a ViT image tower (or the tower itself), as for :func:`vit_blocks` and :func:`vit_project`.
    """
    visual = _vit(model)
    x = visual.conv1(pixels)  # [B, width, grid, grid]
    x = x.flatten(2).transpose(1, 2)  # [B, grid**2, width]
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, width]
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # [B, 1 + grid**2, width]
    x = visual.patch_dropout(x)
    return visual.ln_pre(x)


def vit_blocks(model: torch.nn.Module, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Run transformer blocks ``start:stop`` on a token sequence [B, T, width] (any T: CLIP4IDC runs pairs of 2 images)."""
    transformer = _vit(model).transformer
    blocks = transformer.resblocks[start:stop]
    if not transformer.batch_first:
        x = x.transpose(0, 1)  # [T, B, width]
    for block in blocks:
        x = block(x)
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    return x


def vit_block_attention(model: torch.nn.Module, x: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ViT block ``index`` on tokens [B, N, width]; return its output [B, N, width] and its attention weights
    averaged over heads, [B, N, N] (row q: where token q looks; each row sums to 1).

    The weights are the ones the block itself computes: while it runs, its attention module is asked for them
    (``need_weights=True, average_attn_weights=True``), so nothing of the block is re-implemented here.
    """
    blocks = _vit(model).transformer.resblocks
    if not 0 <= index < len(blocks):
        raise IndexError(f"Block {index} does not exist: this ViT has blocks 0 to {len(blocks) - 1}.")
    attn = blocks[index].attn  # nn.MultiheadAttention
    seen = []

    def ask_for_weights(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def keep_weights(module, args, kwargs, output):
        seen.append(output[1])  # [B, N, N]

    handles = [attn.register_forward_pre_hook(ask_for_weights, with_kwargs=True),
               attn.register_forward_hook(keep_weights, with_kwargs=True)]
    try:
        x = vit_blocks(model, x, index, index + 1)  # [B, N, width]
    finally:
        for handle in handles:
            handle.remove()
    if len(seen) != 1 or seen[0] is None:
        raise RuntimeError("The ViT block did not return its attention weights: open_clip changed how its blocks call "
                           "nn.MultiheadAttention; update idclab.backbones.vit_block_attention.")
    return x, seen[0]


def vit_project(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ln_post`` and ``proj`` on every token: [B, T, width] -> [B, T, embed_dim]."""
    visual = _vit(model)
    x = visual.ln_post(x)
    return x @ visual.proj if visual.proj is not None else x


def image_tokens(model: open_clip.CLIP, pixels: torch.Tensor) -> torch.Tensor:
    """All projected tokens of the visual tower, class token first: [B, 3, S, S] -> [B, 1 + grid**2, embed_dim].

    Token 0 equals ``model.encode_image(pixels)`` (a test checks it).
    """
    return vit_project(model, vit_blocks(model, vit_embed(model, pixels)))


# ----------------------------------------------------------------------------------------------------------------------
# Text encoding with pseudo-word tokens (Pic2Word)
# ----------------------------------------------------------------------------------------------------------------------


def encode_text(model: open_clip.CLIP, tokens: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
    """``model.encode_text(tokens)``, run only on the first L positions, L = the last end-of-text position + 1.

    CLIP's text tower is causal and pools at the end-of-text token, so positions after it never influence the
    result: cutting them off gives the same features (to float rounding; a test checks it) for far less work --
    "a photo of *" is 6 of 77 tokens. Falls back to the stock call for towers that pool otherwise.
    """
    if model.text_pool_type != "argmax" or model.attn_mask is None or not getattr(model.transformer, "batch_first", True):
        return model.encode_text(tokens, normalize=normalize)
    L = int(tokens.argmax(dim=-1).max()) + 1  # EOT has the highest id (49407)
    text = tokens[:, :L]  # [B, L]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding[:L].to(cast)  # [B, L, width]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:L, :L]))  # [B, L, width]
    x = open_clip.transformer.text_global_pool(x, text, "argmax")  # [B, width]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x  # [B, embed_dim]


@contextlib.contextmanager
def pseudo_token_hook(model: open_clip.CLIP, pseudo: torch.Tensor, placeholder_id: int,
                      positions: torch.Tensor | None = None) -> Iterator[None]:
    """While active, the token-embedding output at every ``placeholder_id`` position of row b is ``pseudo[b]``;
    with ``positions`` [B], only at position ``positions[b]`` (which must hold ``placeholder_id``), so a placeholder
    word typed by a user elsewhere in the text keeps its own embedding.

    ``pseudo``: [B, width] (one vector per text in the batch). The hook is always removed on exit.
    """

    def hook(module, inputs, output):  # output: [B, L, width]
        ids = inputs[0]  # [B, L]
        if ids.shape[0] != pseudo.shape[0]:
            raise ValueError(f"{ids.shape[0]} texts but {pseudo.shape[0]} pseudo-token vectors; give one per text.")
        if positions is None:
            mask = ids == placeholder_id  # [B, L]
        else:
            mask = torch.zeros_like(ids, dtype=torch.bool)  # [B, L]
            mask[torch.arange(ids.shape[0], device=ids.device), positions.to(ids.device)] = True
            if not bool((ids[mask] == placeholder_id).all()):
                raise ValueError("A given placeholder position does not hold the placeholder token.")
        return torch.where(mask.unsqueeze(-1), pseudo[:, None, :].to(output.dtype), output)

    handle = model.token_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_text_with_pseudo_tokens(
    model: open_clip.CLIP,
    tokens: torch.Tensor,
    pseudo: torch.Tensor,
    *,
    placeholder: str = PLACEHOLDER,
    positions: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Encode texts in which the placeholder word's embedding is replaced by a per-text vector.

    Args:
        tokens: LongTensor [B, L] from :func:`tokenize`; every row must contain the placeholder.
        pseudo: [B, width] vectors in the token-embedding space (gradients flow into them).
        placeholder: the word whose embedding is replaced (``*`` in Pic2Word).
        positions: LongTensor [B], the one position per row to replace (the prompt template's placeholder; a ``*``
            in a user's text is then left alone); None replaces every placeholder token.
    Returns:
        [B, embed_dim] text features (the end-of-text token after ``ln_final`` and the text projection).
    """
    pid = token_id(placeholder)
    if positions is None:
        missing = (~(tokens == pid).any(dim=1)).nonzero().flatten().tolist()
    else:
        if positions.shape != (tokens.shape[0],):
            raise ValueError(f"positions must be [B] = [{tokens.shape[0]}] (one per text); got {tuple(positions.shape)}.")
        held = tokens.gather(1, positions.to(tokens.device)[:, None].clamp(0, tokens.shape[1] - 1))[:, 0]  # [B]
        missing = ((held != pid) | (positions.to(tokens.device) >= tokens.shape[1])).nonzero().flatten().tolist()
    if missing:
        where = "" if positions is None else " at the given positions"
        raise ValueError(
            f"Texts {missing} contain no placeholder {placeholder!r}{where}; write the prompt with it, e.g. 'a photo of "
            f"{placeholder}'. (Keep it a separate word: in '{placeholder},' BPE may merge it with the comma.)"
        )
    width = model.token_embedding.weight.shape[1]
    if pseudo.ndim != 2 or pseudo.shape[1] != width:
        raise ValueError(f"pseudo must be [B, {width}] (the token-embedding width); got {tuple(pseudo.shape)}.")
    with pseudo_token_hook(model, pseudo, pid, positions):
        return encode_text(model, tokens, normalize=normalize)
