"""idclab.models.clip4idc: split encoder, pooling, adaptation loss, captioner, decoding, data, training, checkpoints."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idclab import backbones as bb
from idclab.data.shapes import ShapesPairs
from idclab import runs
from idclab.models import clip4idc as c
from idclab.train import Trainer

SMOKE = c.config_for("shapes", "smoke")  # idc-micro: ViT 2 blocks, width 32, 32 px, patch 8 -> T = 17


def build(stage="adapt", *, intra=None, seed=0):
    torch.manual_seed(seed)
    cfg = SMOKE if intra is None else dataclasses.replace(
        SMOKE, encoder=dataclasses.replace(SMOKE.encoder, intra_layers=intra))
    return c.CLIP4IDC(cfg, stage=stage)


@pytest.fixture(scope="module")
def pairs():
    return ShapesPairs("train", 16, size=32)


def batch_for(model, pairs, stage_cfg, n=8):
    samples = c.PairSamples.for_stage(pairs, stage_cfg)
    return model.collate()([samples[i] for i in range(n)])


def pixels(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


# ----------------------------------------------------------------------------------------------------------------------
# Pair encoder
# ----------------------------------------------------------------------------------------------------------------------


def test_token_counts_and_cls_indices_micro():
    model = build()
    assert c.tokens_per_image(model.clip) == 17 == 1 + (32 // 8) ** 2
    assert model.encoder.joint_positional_embedding.shape == (34, 32)
    before, after = pixels(3)
    tokens = model.encoder(before, after)
    assert tokens.shape == (3, 34, 32)
    v = model.encode_pair(before, after)
    torch.testing.assert_close(v, (tokens[:, 0] + tokens[:, 17]) / 2)  # recomputed by hand: tokens 0 and T


def test_vit_b16_split_forward_uses_token_197():
    torch.manual_seed(0)
    clip = bb.load_clip("ViT-B-16")  # random weights, ~150M parameters
    enc = c.PairEncoder(clip, intra_layers=9)
    assert enc.n_tokens == 197 and enc.joint_positional_embedding.shape == (394, 768)
    with torch.no_grad():
        tokens = enc(*pixels(1, 224))
        assert tokens.shape == (1, 394, 512)
        torch.testing.assert_close(enc.pool(tokens), (tokens[:, 0] + tokens[:, 197]) / 2)
        assert not torch.allclose(enc.pool(tokens), (tokens[:, 0] + tokens[:, 50]) / 2)  # not the hard-coded 50


def test_without_joint_blocks_each_image_is_plain_clip():
    # k = n_blocks and zero new embeddings: ln_post(ln_mid(x)) = ln_post(x) (ln_mid at init only standardises), so
    # the two projected class tokens must equal CLIP's own encode_image of each image.
    model = build(intra=2).eval()
    enc = model.encoder
    with torch.no_grad():
        for p in (enc.bef_embedding, enc.aft_embedding, enc.joint_positional_embedding):
            p.zero_()
        before, after = pixels(2)
        tokens = enc(before, after)
        torch.testing.assert_close(tokens[:, 0], model.clip.encode_image(before), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tokens[:, 17], model.clip.encode_image(after), atol=1e-4, rtol=1e-4)


def test_joint_blocks_let_the_images_interact():
    before, after = pixels(1)
    for intra, interacts in ((1, True), (2, False)):
        model = build(intra=intra).eval()
        with torch.no_grad():
            a = model.encoder(before, after)[:, 0]
            b = model.encoder(before, after + 1.0)[:, 0]  # the before image's class token
        assert (not torch.allclose(a, b)) == interacts


def test_joint_attention_maps_are_the_joint_blocks_softmax():
    before, after = pixels(2)
    model = build(intra=0).eval()  # idc-micro: 2 blocks, both joint
    maps = model.encoder.joint_attention(before, after)
    assert len(maps) == 2 and maps[0].shape == (2, 34, 34)  # 2T = 2 x 17 tokens
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 34))
    # Recompute block 0's map by hand: heads' softmax(q k^T / sqrt(d)), averaged.
    block = model.clip.visual.transformer.resblocks[0]
    with torch.no_grad():
        h = block.ln_1(model.encoder._joint_input(before, after))  # [B, 2T, W]
        q, k, _ = (h @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
        heads = block.attn.num_heads
        q, k = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k))  # [B, heads, 2T, d]
        manual = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1).mean(1)
    torch.testing.assert_close(maps[0], manual)
    # No joint block, no map.
    assert len(build(intra=2).encoder.joint_attention(before, after)) == 0


def test_intra_layers_and_pixel_shape_are_validated():
    with pytest.raises(ValueError, match=r"intra_layers=3 must lie in \[0, 2\]"):
        build(intra=3)
    model = build()
    with pytest.raises(ValueError, match="to_pixels"):
        model.encoder(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: adaptation
# ----------------------------------------------------------------------------------------------------------------------


def test_adaptation_loss_matches_the_formula(pairs):
    model = build().eval()
    batch = batch_for(model, pairs, SMOKE.adapt)
    loss, logs = c.adaptation_loss(model, batch)
    with torch.no_grad():
        tokens = model.encoder(batch["before"], batch["after"])
        v = F.normalize((tokens[:, 0] + tokens[:, 17]) / 2, dim=-1)
        g = F.normalize(model.clip.encode_text(batch["text"]), dim=-1)
        s = 100.0 * v @ g.T  # [B, B] = cos / 0.01
        labels = torch.arange(len(v))
        ip_t, t_ip = F.cross_entropy(s, labels), F.cross_entropy(s.T, labels)
    torch.testing.assert_close(loss.detach(), (ip_t + t_ip) / 2)
    assert logs["ip_t"] == pytest.approx(ip_t.item(), rel=1e-5) and logs["t_ip"] == pytest.approx(t_ip.item(), rel=1e-5)


def test_adaptation_gradients_reach_every_trainable_parameter_only(pairs):
    model = build()
    loss, _ = model.loss(batch_for(model, pairs, SMOKE.adapt))
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"encoder.clip.{n}" for n in ("visual.conv1.weight", "visual.class_embedding",
                                                     "visual.positional_embedding", "visual.ln_pre.weight",
                                                     "visual.ln_pre.bias", "token_embedding.weight",
                                                     "positional_embedding", "logit_scale")}


def test_param_groups_learning_rates_and_decay():
    model = build("caption")
    stage = dataclasses.replace(SMOKE.caption, lr=1.0, pair_lr=2.0, clip_lr=3.0, weight_decay=0.5)
    groups = c.param_groups(model, stage)
    where = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(where) == sum(p.requires_grad for p in named.values())
    assert where[id(named["captioner.head_bias"])]["lr"] == 1.0
    assert where[id(named["encoder.joint_positional_embedding"])]["lr"] == 2.0
    assert where[id(named["encoder.clip.visual.proj"])]["lr"] == 3.0
    assert where[id(named["encoder.clip.visual.proj"])]["weight_decay"] == 0.5
    for name in ("encoder.clip.visual.ln_post.bias", "encoder.bef_embedding", "captioner.decoder.0.mlp.0.bias"):
        assert where[id(named[name])]["weight_decay"] == 0.0
    assert id(model.clip.token_embedding.weight) not in where  # frozen (tied) token table


def test_retrieval_scores_by_hand():
    # 3 pairs; captions 0,1 -> pair 0, caption 2 -> pair 1, caption 3 -> pair 2.
    eye = torch.eye(4)
    pair = torch.stack([eye[0], eye[1], eye[2]])
    text = F.normalize(torch.stack([eye[0] + 0.1 * eye[1], eye[2], eye[1], eye[2] + 0.5 * eye[1]]), dim=-1)
    text_pair = torch.tensor([0, 0, 1, 2])
    out = c.retrieval_scores(pair, text, text_pair, ks=(1, 2, 10))
    # T->IP: caption 1 (= pair 2's vector) ranks pair 2 first and its own pair 0 second (tie with pair 1 at 0, lower
    # index first); the other three captions hit at rank 1.
    assert out["t_ip_R@1"] == pytest.approx(75.0) and out["t_ip_R@10"] == 100.0
    # IP->T with group max: pairs 0 and 1 rank their own group first; pair 2 ranks group 0 first (caption 1, score 1)
    # above its own group (caption 3, 0.894) -> miss at 1, hit at 2.
    assert out["ip_t_R@1"] == pytest.approx(200 / 3) and out["ip_t_R@2"] == 100.0


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2: the captioner
# ----------------------------------------------------------------------------------------------------------------------


def test_captioner_embeddings_are_tied_to_clip():
    model = build("caption")
    assert model.captioner.token_embedding.weight is model.clip.token_embedding.weight
    assert model.captioner.positional_embedding is model.clip.positional_embedding
    with pytest.raises(ValueError, match="DecoderConfig.width must be 32"):
        c.Captioner(c.DecoderConfig(width=64, heads=2), model.clip.token_embedding, model.clip.positional_embedding)


def test_caption_tensors_shift_and_pad():
    inputs, targets = c.caption_tensors(["a red cube !;", "a"], max_tokens=32)
    words, a = bb.get_tokenizer().encode("a red cube !;"), bb.token_id("a")
    assert 0 in words  # BPE id 0 ("!" inside a word) is the reference's pad id; here it stays a target (IDC-14)
    n = len(words)
    assert inputs.tolist() == [[c.SOT, *words], [c.SOT, a] + [0] * (n - 1)]
    assert targets.tolist() == [[*words, c.EOT], [a, c.EOT] + [-100] * (n - 1)]
    long_in, long_t = c.caption_tensors([" ".join(["cube"] * 50)], max_tokens=32)
    assert long_in.shape == (1, 32) and long_t[0, -1] == c.EOT and long_in[0, 0] == c.SOT
    with pytest.raises(ValueError, match=r"Captions \[1\] are empty"):
        c.caption_tensors(["a cube", "  "])


def test_empty_captions_are_refused_when_batching(pairs):
    model = build("adapt")
    sample = dict(c.PairSamples(pairs)[0], caption="", id="007")
    with pytest.raises(ValueError, match="pairs \\['007'\\] have an empty caption"):
        model.collate()([sample])


def test_loss_ignores_padding_and_averages_real_tokens(pairs):
    model = build("caption").eval()
    stage = dataclasses.replace(SMOKE.caption, no_change=False)
    batch = batch_for(model, pairs, stage)
    loss, _ = c.captioning_loss(model, batch)
    pad = batch["caption_target"] == -100
    assert pad.any()
    noisy = dict(batch, caption_input=torch.where(pad, torch.randint(1, 49000, pad.shape), batch["caption_input"]))
    torch.testing.assert_close(c.captioning_loss(model, noisy)[0], loss)  # padded inputs do not matter
    with torch.no_grad():
        logits = model.captioner(model.encoder(batch["before"], batch["after"]), batch["caption_input"])
        logp = logits.log_softmax(-1)
        t = batch["caption_target"]
        per_token = -logp.gather(2, t.clamp(min=0)[..., None])[..., 0]  # [B, L]
    torch.testing.assert_close(loss, per_token[~pad].mean())
    fewer = dict(batch, caption_target=batch["caption_target"].clone())
    fewer["caption_target"][0, 0] = -100  # one more ignored token: the mean is over the others
    kept = ~pad
    kept[0, 0] = False
    torch.testing.assert_close(c.captioning_loss(model, fewer)[0], per_token[kept].mean())


def test_decoder_layer_i_cross_attends_encoder_layer_i():
    model = build("caption").eval()
    cap = model.captioner
    seen, produced = {}, {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: produced.__setitem__(i, o))
             for i, layer in enumerate(cap.encoder)]
    hooks += [layer.cross_attn.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, a[1]))
              for i, layer in enumerate(cap.decoder)]
    with torch.no_grad():
        cap(model.encoder(*pixels(2)), torch.tensor([[c.SOT, 5, 6], [c.SOT, 7, 8]]))
    for h in hooks:
        h.remove()
    assert len(cap.decoder) == 2 and not torch.allclose(produced[0], produced[1])
    for i in range(len(cap.decoder)):
        assert seen[i] is produced[i]


def test_decoder_is_causal():
    model = build("caption").eval()
    ids = torch.tensor([[c.SOT, 10, 20, 30, 40]])
    changed = ids.clone()
    changed[0, 3] = 999
    with torch.no_grad():
        tokens = model.encoder(*pixels(1))
        a, b = model.captioner(tokens, ids), model.captioner(tokens, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def sequence_score(model, before, after, ids, max_len):
    """Mean log-prob per generated token by teacher forcing (EOT counted when the caption ended)."""
    ended = len(ids) < max_len
    inputs = torch.tensor([[c.SOT, *ids]])
    targets = torch.tensor([[*ids, c.EOT]]) if ended else torch.tensor([ids])
    with torch.no_grad():
        logp = model.captioner(model.encoder(before, after), inputs[:, :targets.shape[1]]).log_softmax(-1)
    return logp.gather(2, targets[..., None]).sum().item() / targets.shape[1]


def test_generate_greedy_and_beam():
    model = build("caption", seed=3).eval()
    before, after = pixels(3, seed=1)
    texts = model.generate(before, after, max_len=6)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    greedy = model.generate_ids(before, after, max_len=6)
    with torch.no_grad():
        memories = model.captioner.encode(model.encoder(before, after))
    for b in range(3):
        ids, score = model.captioner.beam_search([m[b:b + 1] for m in memories], 1, 6)
        assert ids == greedy[b][0] and score == pytest.approx(greedy[b][1], abs=1e-5)  # beam 1 = greedy
    beam = model.generate_ids(before, after, beam=3, max_len=6)
    for b in range(3):
        one = (before[b:b + 1], after[b:b + 1])
        g = sequence_score(model, *one, greedy[b][0], 6)
        assert g == pytest.approx(greedy[b][1], abs=1e-4)  # the reported score is the sequence's log-prob
        assert sequence_score(model, *one, beam[b][0], 6) == pytest.approx(beam[b][1], abs=1e-4)
        assert beam[b][1] >= g - 1e-5


def test_generate_stops_at_eot():
    model = build("caption").eval()
    with torch.no_grad():
        model.captioner.head_bias[c.EOT] = 1e4  # EOT always wins
    assert model.generate_ids(*pixels(2), max_len=8) == [([], 0.0), ([], 0.0)]
    assert model.generate(*pixels(2), beam=2) == ["", ""]


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


class TinyPairs(torch.utils.data.Dataset):
    """Fixed pairs with 6, 1, 3 and 2 captions; images are constants that tell before (p) from distractor (100 + p)."""

    COUNTS = (6, 1, 3, 2)

    def __len__(self):
        return len(self.COUNTS)

    def __getitem__(self, p):
        return dict(before=np.full((2, 2, 3), p, np.uint8), after=np.full((2, 2, 3), 50 + p, np.uint8),
                    distractor=np.full((2, 2, 3), 100 + p, np.uint8), id=f"pair{p}",
                    captions=[f"change {p}.{k}" for k in range(self.COUNTS[p])],
                    no_change_captions=[f"same {p}.{k}" for k in range(3)])


def epochs_of(samples, n_epochs):
    """[epoch][index] -> sample, through set_epoch as the Trainer calls it."""
    out = []
    for e in range(n_epochs):
        samples.set_epoch(e)
        out.append([samples[i] for i in range(len(samples))])
    return out


def test_stage1_samples_every_caption_once_per_epoch_and_redraws_the_swap():
    # The reference's stage 1: one sample per (pair, caption) each epoch; the swap (p = 0.5) redrawn on every read.
    data = TinyPairs()
    samples = c.PairSamples(data, samples="per_caption", distractor_swap_p=0.5, seed=3)
    assert len(samples) == sum(TinyPairs.COUNTS) == 12
    epochs = epochs_of(samples, 200)
    every_caption = sorted((p, cap) for p in range(4) for cap in data[p]["captions"])
    for drawn in epochs:
        assert sorted((s["pair"], s["caption"]) for s in drawn) == every_caption
        for s in drawn:
            expected = data[s["pair"]]["distractor" if s["swapped"] else "before"]
            assert np.array_equal(s["before"], expected) and np.array_equal(s["after"], data[s["pair"]]["after"])
    flags = np.array([[s["swapped"] for s in drawn] for drawn in epochs])  # [epochs, samples]
    assert abs(flags.mean() - 0.5) < 0.05  # 2,400 draws: sd 0.01
    assert all(0.3 < f < 0.7 for f in flags.mean(0))  # every sample is swapped in about half of the epochs
    assert (flags[1:] != flags[:-1]).any(1).all()  # each epoch draws afresh
    # The same seed gives the same samples in every epoch; another seed other swaps.
    again = epochs_of(c.PairSamples(data, samples="per_caption", distractor_swap_p=0.5, seed=3), 5)
    assert [[(s["caption"], s["swapped"]) for s in d] for d in again] == \
        [[(s["caption"], s["swapped"]) for s in d] for d in epochs[:5]]
    other = epochs_of(c.PairSamples(data, samples="per_caption", distractor_swap_p=0.5, seed=4), 5)
    assert [[s["swapped"] for s in d] for d in other] != [[s["swapped"] for s in d] for d in epochs[:5]]
    # No swap where p = 0, always where p = 1.
    assert not any(s["swapped"] for d in epochs_of(c.PairSamples(data, distractor_swap_p=0.0), 3) for s in d)
    assert all(s["swapped"] for d in epochs_of(c.PairSamples(data, distractor_swap_p=1.0), 3) for s in d)


def test_stage2_samples_one_pair_each_with_a_random_caption_per_epoch():
    # The reference's stage 2: one sample per pair each epoch, a random reference (and no-change caption) each time.
    data = TinyPairs()
    samples = c.PairSamples(data, samples="per_pair", no_change=True, seed=5)
    assert len(samples) == 4
    epochs = epochs_of(samples, 300)
    for drawn in epochs:
        assert sorted(s["pair"] for s in drawn) == [0, 1, 2, 3] and not any(s["swapped"] for s in drawn)
        assert all(np.array_equal(s["distractor"], data[s["pair"]]["distractor"]) for s in drawn)
    for p, n in enumerate(TinyPairs.COUNTS):
        caps = [d[i]["caption"] for d in epochs for i in range(4) if d[i]["pair"] == p]
        freq = np.array([caps.count(cap) for cap in data[p]["captions"]]) / len(caps)
        assert np.abs(freq - 1 / n).max() < 0.1  # uniform over the pair's captions (300 draws)
        nc = [d[i]["no_change_caption"] for d in epochs for i in range(4) if d[i]["pair"] == p]
        assert set(nc) == set(data[p]["no_change_captions"])
    first = [s["caption"] for s in epochs[0]]
    assert sum(first != [s["caption"] for s in d] for d in epochs[1:]) > 250  # the draw changes between epochs
    again = epochs_of(c.PairSamples(data, samples="per_pair", no_change=True, seed=5), 3)
    assert [[s["caption"] for s in d] for d in again] == [[s["caption"] for s in d] for d in epochs[:3]]


def test_pair_samples_refuse_bad_settings_and_missing_captions():
    with pytest.raises(ValueError, match="choose one of"):
        c.PairSamples(TinyPairs(), samples="per_image")
    with pytest.raises(ValueError, match="choose one of"):
        dataclasses.replace(SMOKE.adapt, samples="per_image")

    class NoCaptions(TinyPairs):
        def __getitem__(self, p):
            return dict(super().__getitem__(p), captions=[] if p == 2 else super().__getitem__(p)["captions"])

    with pytest.raises(ValueError, match="Pair 2 has no captions"):
        c.PairSamples(NoCaptions())


def test_samples_per_epoch_match_the_reference_for_every_preset(pairs):
    # Stage 1: pairs x captions per pair; stage 2: one per pair (Shapes pairs have 5 captions each).
    for dataset in c.DATASETS:
        paper = c.config_for(dataset, "paper")
        assert (paper.adapt.samples, paper.adapt.repeats) == ("per_caption", 1), dataset
        assert (paper.caption.samples, paper.caption.repeats) == ("per_pair", 1), dataset
    for profile in ("toy", "smoke"):
        cfg = c.config_for("shapes", profile)
        assert len(c.PairSamples.for_stage(pairs, cfg.adapt)) == 5 * len(pairs)
        assert len(c.PairSamples.for_stage(pairs, cfg.caption)) == len(pairs)
    assert c.caption_counts(pairs) == [len(pairs[i]["captions"]) for i in range(len(pairs))]
    assert len(c.PairSamples(pairs, repeats=2)) == 10 * len(pairs)


def test_paper_presets_validate_every_epoch_and_stop_early_in_stage_2(pairs):
    paper = c.config_for("clevr", "paper")
    assert paper.adapt.eval_every is None and paper.adapt.patience is None  # the reference: no early stop in stage 1
    assert paper.caption.eval_every is None and paper.caption.patience == 11  # stops after 11 epochs without a gain
    adapt = c.trainer_config(paper.adapt, 1280, select_metric="t_ip_R@1")  # 10 steps per epoch
    assert (adapt.eval_every, adapt.patience, adapt.max_steps) == (10, None, 120)
    caption = c.trainer_config(paper.caption, 160, select_metric="CIDEr")
    assert (caption.eval_every, caption.patience, caption.max_steps) == (10, 11, 500)
    toy = c.config_for("shapes", "toy")  # step budgets validate every eval_every steps, or only at the end
    assert c.trainer_config(toy.adapt, 4000).eval_every == toy.adapt.eval_every == 200
    assert c.trainer_config(dataclasses.replace(toy.adapt, eval_every=None), 4000).eval_every is None


def test_captioning_batch_has_the_no_change_term(pairs):
    model = build("caption")
    batch = batch_for(model, pairs, SMOKE.caption)
    assert SMOKE.caption.no_change and {"distractor", "no_change_input", "no_change_target"} <= set(batch)
    loss, logs = model.loss(batch)
    assert set(logs) == {"change", "no_change"} and loss.item() == pytest.approx(logs["change"] + logs["no_change"])


def test_collate_converts_sizes_and_needs_samples(pairs):
    model = build()
    item = dict(pairs[0], caption="x", before=np.zeros((48, 40, 4), np.uint8))  # RGBA, another size
    batch = model.collate()([item, dict(pairs[1], caption="y")])
    assert batch["before"].shape == (2, 3, 32, 32) and batch["text"].shape == (2, 32)
    with pytest.raises(KeyError, match="PairSamples"):
        model.collate()([pairs[0]])


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["adapt", "caption"])
def test_loss_decreases_on_a_fixed_batch(pairs, stage):
    model = build(stage)
    stage_cfg = getattr(SMOKE, stage)
    batch = batch_for(model, pairs, stage_cfg)
    opt = torch.optim.AdamW(c.param_groups(model, dataclasses.replace(stage_cfg, lr=3e-3, clip_lr=1e-3)))
    losses = []
    for _ in range(8):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.3, losses


def test_trainer_runs_both_stages_and_stage2_starts_from_stage1(pairs, tmp_path):
    model = build("adapt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = c.PairSamples.for_stage(pairs, SMOKE.adapt)
    cfg = c.trainer_config(SMOKE.adapt, len(samples), max_steps=6, log_every=1, progress=False)
    result = Trainer(model, c.CLIP4IDC.loss, samples, config=cfg, collate_fn=model.collate(),
                     param_groups=c.param_groups(model, SMOKE.adapt), out_dir=tmp_path / "adapt",
                     header=runs.make_header("clip4idc", "adapt", SMOKE, model.model_config()), device="cpu").fit()
    assert len(result.history) == 6 and all(np.isfinite(h["loss"]) and "ip_t" in h for h in result.history)
    state = model.state_dict()
    assert not torch.equal(state["encoder.joint_positional_embedding"], before["encoder.joint_positional_embedding"])
    assert not torch.equal(state["encoder.clip.visual.proj"], before["encoder.clip.visual.proj"])
    assert torch.equal(state["encoder.clip.visual.conv1.weight"], before["encoder.clip.visual.conv1.weight"])

    ckpt = runs.read(tmp_path / "adapt" / "last.pt")
    captioner = build("caption", seed=1)
    captioner.load_adapted(ckpt["model"], saved_config=ckpt["header"]["architecture"])
    for k, v in state.items():
        assert torch.equal(captioner.state_dict()[k], v), k
    samples = c.PairSamples.for_stage(pairs, SMOKE.caption)
    cfg = c.trainer_config(SMOKE.caption, len(samples), max_steps=6, log_every=1, progress=False)
    result = Trainer(captioner, c.CLIP4IDC.loss, samples, config=cfg, collate_fn=captioner.collate(),
                     param_groups=c.param_groups(captioner, SMOKE.caption), device="cpu").fit()
    assert all(np.isfinite(h["loss"]) and "no_change" in h for h in result.history)


# ----------------------------------------------------------------------------------------------------------------------
# Configs and checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def test_presets_carry_the_paper_values():
    clevr = c.config_for("clevr", "paper")
    assert (clevr.encoder.backbone, clevr.encoder.pretrained, clevr.encoder.intra_layers) == \
        ("ViT-B-32-quickgelu", "openai", 9)
    assert clevr.encoder.temperature == 0.01 and clevr.encoder.max_words == 32
    assert (clevr.adapt.lr, clevr.adapt.weight_decay, clevr.adapt.schedule, clevr.adapt.batch_size,
            clevr.adapt.epochs, clevr.adapt.distractor_swap_p) == (1e-4, 0.2, "cosine_whole_run", 128, 12, 0.5)
    assert (clevr.caption.weight_decay, clevr.caption.schedule, clevr.caption.epochs, clevr.caption.no_change,
            clevr.caption.pair_lr) == (0.01, "linear_whole_run", 50, True, clevr.caption.clip_lr)
    d = clevr.decoder
    assert (d.layers, d.width, d.heads, d.ffn, d.dropout, d.max_tokens, d.ignore_index) == \
        (3, 512, 8, 2048, 0.1, 32, -100)
    spot, ier = c.config_for("spot", "paper"), c.config_for("ier", "paper")
    assert spot.adapt.epochs == 20 and spot.adapt.distractor_swap_p == 0 and not spot.caption.no_change
    assert ier.adapt == spot.adapt and ier.caption == spot.caption
    toy = c.config_for("shapes", "toy")
    assert toy.encoder.backbone == "shapes-clip" and toy.decoder.width == 128 and toy.decoder.heads == 4
    with pytest.raises(ValueError, match="config_for\\('shapes', 'toy'\\)"):
        c.config_for("clevr", "toy")
    assert c.CLIP4IDCConfig.from_dict(toy.to_dict()) == toy


def test_check_compatible_refuses_another_backbone():
    saved = build("caption").model_config()
    other = dict(saved, encoder=dict(saved["encoder"], backbone="shapes-clip", embed_dim=128))
    with pytest.raises(ValueError, match=r"backbone='idc-micro'.*backbone='shapes-clip'"):
        c.check_compatible(saved, other)
    stage1 = dict(saved, decoder=None)
    c.check_compatible(stage1, saved)  # a stage-1 checkpoint fits a stage-2 model
    with pytest.raises(ValueError, match="intra_layers"):
        build(intra=2).load_adapted(build().state_dict(), saved_config=build().model_config())
