"""Retrievers: CLIP image features underneath, a method on top; and the prompts that turn a query into text.

A retriever has two calls, ``encode_gallery`` and ``encode_query``, on top of raw CLIP image features that the
harness computes once per image (:meth:`CLIPRetriever.encode_image`). :class:`Baseline` gives the three zero-shot rows
of every CIR table (image only, text only, image + text); Pic2Word and the Combiner subclass :class:`CLIPRetriever`.
"""

from __future__ import annotations

import hashlib
import re
import string
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idclab import backbones
from idclab.configs import pick_device
from idclab.data.cir_benchmark import KINDS, OPTIONAL_FIELDS, CIRQuery

# ----------------------------------------------------------------------------------------------------------------------
# Prompts: how each method turns a query's fields into text
# ----------------------------------------------------------------------------------------------------------------------

# The text-only and image+text baselines' prompts, as in Pic2Word's evaluation code with two deliberate differences:
# FashionIQ's text-only query drops a literal "*" that the reference code leaves in (there it reaches the text
# encoder as a stray word), and the domain prompt has no trailing space (the tokenizer strips it anyway).
TEXT_PROMPTS = {
    "cirr": "{caption}",
    "fashioniq": "{cap2} and {cap1}",
    "domain": "a {domain} of",
    "coco": "a photo of {classes}",
}


def template_fields(template: str) -> tuple[str, ...]:
    """The ``{field}`` names a template uses, in order."""
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def compose(template: str, query: CIRQuery, *, strip: str | None = None, context_length: int | None = None) -> str:
    """Fill ``template`` with the query's fields (see :func:`prompt_fields`)."""
    return template.format(**prompt_fields(template, query, strip=strip, context_length=context_length))


def prompt_fields(template: str, query: CIRQuery, *, strip: str | None = None,
                  context_length: int | None = None) -> dict[str, str]:
    """The query's values for the ``{field}`` names of ``template``, each stripped of the characters ``strip`` at both
    ends (default: whitespace); a missing or empty field is an error naming the query.

    ``context_length``: when the filled prompt is longer than the text encoder reads (start and end tokens
    included), the longest fields are cut from their ends, with a warning that says how much was dropped; the
    template's own words (Pic2Word's ``*`` among them) are always kept whole.
    """
    text_fields = {}
    for name in template_fields(template):
        if name not in query.fields:
            raise ValueError(f"Query {query.id!r} ({query.kind}) has no field {name!r} for the prompt {template!r}; "
                             f"it has {sorted(query.fields)}. Use a template written for {query.kind!r} queries.")
        value = str(query.fields[name]).strip(strip)
        if not value.strip():
            raise ValueError(f"Query {query.id!r} has an empty modification text (field {name!r}). Fix or remove that "
                             "entry in the annotation file: an empty text would silently turn the query into an "
                             "image-only one.")
        text_fields[name] = value
    if context_length is None:
        return text_fields
    return _fit(template, text_fields, context_length, query.id)


def _fit(template: str, fields: dict[str, str], context_length: int, query_id: str) -> dict[str, str]:
    """Cut the longest fields (in tokens, from their ends) until the filled template fits ``context_length``."""
    tok = backbones.get_tokenizer()

    def length(values: dict[str, str]) -> int:  # tokens of the filled template, start and end included
        return len(tok.encode(template.format(**values))) + 2

    total = length(fields)
    if total <= context_length:
        return fields
    ids = {k: tok.encode(v) for k, v in fields.items()}
    budget = sum(len(v) for v in ids.values()) - (total - context_length)  # tokens left for the fields
    cap = max(len(v) for v in ids.values())  # each field keeps at most ``cap`` tokens: the longest are cut first
    while cap > 0 and sum(min(len(v), cap) for v in ids.values()) > budget:
        cap -= 1
    while cap > 0:
        cut = {k: tok.decode(v[:cap]).strip() if len(v) > cap else fields[k] for k, v in ids.items()}
        if length(cut) <= context_length:  # BPE may merge differently across a cut: check the real length
            break
        cap -= 1
    if cap == 0:
        raise ValueError(f"The prompt {template!r} leaves no room for the text of query {query_id!r} within the text "
                         f"encoder's {context_length} tokens; shorten the template.")
    dropped = "; ".join(f"{k}: {len(v) - cap} of {len(v)} tokens ({tok.decode(v[cap:]).strip()[:60]!r}...)"
                        for k, v in ids.items() if len(v) > cap)
    warnings.warn(f"Query {query_id!r}: its prompt is {total} tokens, more than the {context_length} the text encoder "
                  f"reads (start and end included); cut the end of the text: {dropped}", stacklevel=2)
    return cut


def placeholder_position(template: str, fields: Mapping[str, str], placeholder: str) -> int:
    """The token position (start token = 0) of the template's own ``placeholder`` word in the filled template: a
    placeholder character typed by a user inside a field is not it."""
    head = template[:_placeholder_span(template, placeholder)[0]]  # the template up to its placeholder word
    return 1 + len(backbones.get_tokenizer().encode(head.format(**fields)))


def _placeholder_span(template: str, placeholder: str) -> tuple[int, int]:
    """(start, end) of the one word of ``template`` that is exactly ``placeholder``; an error if there are none or
    several."""
    found = [m.span() for m in re.finditer(r"(?<!\S)" + re.escape(placeholder) + r"(?!\S)", template)]
    example = f"e.g. 'a photo of {placeholder} , {{caption}}' (with a space before any punctuation)"
    if not found:
        raise ValueError(f"The prompt {template!r} has no placeholder {placeholder!r} as a word of its own, so the "
                         f"image would be ignored; write it once, {example}.")
    if len(found) > 1:
        raise ValueError(f"The prompt {template!r} has {len(found)} placeholders {placeholder!r}; the image becomes "
                         f"one word: write it once, {example}.")
    return found[0]


def check_prompts(prompts: Mapping[str, str], *, placeholder: str | None = None) -> dict[str, str]:
    """Check a {kind: template} table: known kinds, only that kind's fields, and (Pic2Word) the placeholder.

    The placeholder must come out of CLIP's tokenizer as its own token: "* ," works, "*," does not (the BPE
    pre-tokenizer glues runs of punctuation together; Pic2Word's issue #28).
    """
    prompts = dict(prompts)
    for kind, template in prompts.items():
        if kind not in KINDS:
            raise ValueError(f"Unknown query kind {kind!r} in prompts; kinds are {sorted(KINDS)}.")
        extra = set(template_fields(template)) - set(KINDS[kind]) - OPTIONAL_FIELDS
        if extra:
            raise ValueError(f"The {kind!r} prompt {template!r} uses fields {sorted(extra)}; {kind!r} queries have "
                             f"{list(KINDS[kind])}.")
        if placeholder is not None:
            _placeholder_span(template, placeholder)
            filled = template.format(**{f: "x" for f in template_fields(template)})
            ids = backbones.tokenize(filled)[0]
            if not bool((ids == backbones.token_id(placeholder)).any()):
                raise ValueError(
                    f"The {kind!r} prompt {template!r} has no placeholder {placeholder!r} token, so the image would "
                    f"be ignored. Put {placeholder!r} in it as a word of its own, e.g. 'a photo of {placeholder} , "
                    f"{{caption}}' (with a space before any punctuation).")
    return prompts


# ----------------------------------------------------------------------------------------------------------------------
# Retrievers
# ----------------------------------------------------------------------------------------------------------------------


class CLIPRetriever:
    """The retriever interface, on a (frozen) CLIP.

    The harness calls :meth:`encode_image` once per image (and caches the raw features under :meth:`image_key`),
    then :meth:`encode_gallery` on gallery features and :meth:`encode_query` on reference features with the queries.
    Subclasses set ``method`` and override the two ``encode_*`` calls; :meth:`describe` is recorded with results.
    """

    method = "image"
    # {query kind: characters} stripped from both ends of each text field before the prompt is filled (other kinds:
    # whitespace). The Combiner strips ".?, " from FashionIQ captions, as its reference code does.
    field_strip: Mapping[str, str] = {}

    def __init__(self, clip: torch.nn.Module, *, preprocess: str = "center_crop",
                 device: str | torch.device | None = None):
        if preprocess not in backbones.RESIZE_MODES:
            raise ValueError(f"preprocess={preprocess!r}; choose one of {backbones.RESIZE_MODES}.")
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.clip = clip.to(self.device).eval()
        self.preprocess = preprocess
        dims = backbones.clip_dims(clip)
        self.image_size, self.context_length = dims.image_size, dims.context_length
        self._image_key: str | None = None

    def image_key(self) -> str:
        """A hash of the image tower's weights and the preprocessing: equal keys give equal image features."""
        if self._image_key is None:
            h = hashlib.sha256(f"{self.preprocess}:{self.image_size}".encode())
            for name, tensor in sorted(backbones.image_tower(self.clip).state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().numpy().tobytes())
            self._image_key = h.hexdigest()[:20]
        return self._image_key

    @torch.no_grad()
    def encode_image(self, images: Sequence[np.ndarray]) -> Tensor:
        """uint8 images -> raw (unnormalised) CLIP image embeddings [B, D], float32."""
        pixels = backbones.to_pixels(list(images), self.image_size, device=self.device, resize=self.preprocess)
        return self.clip.encode_image(pixels).float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Texts -> L2-normalised CLIP text embeddings [B, D]."""
        tokens = backbones.tokenize(list(texts), context_length=self.context_length).to(self.device)
        return F.normalize(backbones.encode_text(self.clip, tokens).float(), dim=-1)

    def texts(self, queries: Sequence[CIRQuery]) -> list[str]:
        """Each query's text from ``self.prompts`` (its kind's template); a kind without a template is an error.
        A text longer than the text encoder's context is cut to fit, with a warning (:func:`prompt_fields`)."""
        return [template.format(**fields) for template, fields in map(self.prompt, queries)]

    def prompt(self, query: CIRQuery) -> tuple[str, dict[str, str]]:
        """The template of the query's kind and the query's values for its fields (cut to fit the context)."""
        if query.kind not in self.prompts:
            raise ValueError(f"No {self.method} prompt for {query.kind!r} queries; add one to prompts "
                             f"({sorted(self.prompts)}).")
        template = self.prompts[query.kind]
        return template, prompt_fields(template, query, strip=self.field_strip.get(query.kind),
                                       context_length=self.context_length)

    def encode_gallery(self, image_feats: Tensor) -> Tensor:  # [G, D] raw -> [G, D] normalised
        return F.normalize(image_feats.float(), dim=-1)

    def encode_query(self, image_feats: Tensor, queries: Sequence[CIRQuery]) -> Tensor:  # [B, D] -> [B, D]
        return F.normalize(image_feats.float(), dim=-1)

    def describe(self) -> dict:
        out = dict(method=self.method, backbone=getattr(self.clip, "idclab_name", type(self.clip).__name__),
                   preprocess=self.preprocess)
        if self.field_strip:
            out["field_strip"] = dict(self.field_strip)
        return out


class Baseline(CLIPRetriever):
    """The three zero-shot baselines of every CIR table (Pic2Word's and the Combiner's papers report them):

    * ``image`` -- the reference image's embedding alone (ignores the text);
    * ``text`` -- the modification text alone (TEXT_PROMPTS);
    * ``sum`` -- normalise(normalise(image) + normalise(text)), the "image + text" row (and the query of the
      Combiner's first stage, which fine-tunes CLIP with it).
    """

    METHODS = ("image", "text", "sum")

    def __init__(self, clip: torch.nn.Module, method: str, *, prompts: Mapping[str, str] | None = None, **kwargs):
        if method not in self.METHODS:
            raise ValueError(f"Unknown baseline {method!r}; choose one of {self.METHODS}.")
        super().__init__(clip, **kwargs)
        self.method = method
        self.prompts = check_prompts(TEXT_PROMPTS if prompts is None else prompts)

    def encode_query(self, image_feats: Tensor, queries: Sequence[CIRQuery]) -> Tensor:
        image = F.normalize(image_feats.float(), dim=-1)  # [B, D]
        if self.method == "image":
            return image
        text = self.encode_text(self.texts(queries))  # [B, D]
        return text if self.method == "text" else F.normalize(image + text, dim=-1)

    def describe(self) -> dict:
        out = super().describe()
        if self.method != "image":
            out["prompts"] = dict(self.prompts)
        return out
