"""idclab.backbones: names, the QuickGELU trap, tokenising, images, the ViT token sequence and pseudo-token text encoding."""

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
    v = tiny.visual
    with torch.no_grad():
        x = bb.vit_embed(v, pixels)
        split = bb.vit_blocks(v, bb.vit_blocks(v, x, 0, 2), 2)
        whole = bb.vit_blocks(v, x)
    torch.testing.assert_close(split, whole)


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
