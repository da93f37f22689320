"""Bad input gets one clear line (issue 12 items 4, 5, 6 and the feature cache of 8): zero and out-of-range counts,
broken image files, 16-bit images, prompts longer than CLIP's context, a user's literal "*", replaced gallery files.

CLI cases run ``idclab.cli.main`` in this process: a user error is a SystemExit whose message is one "error: ..."
line; anything else (a traceback for the user) fails the test. One case also runs the real command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile

from idclab import backbones, cir, cli
from idclab.cir import ALL, CIRBenchmark, CIRQuery
from idclab.data.image_folder import ImageFolder, check_readable
from idclab.images import ImageError, read_image
from idclab.models import pic2word as p

ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", IDCLAB_PROFILE="smoke")


def cli_error(*args) -> str:
    """The one-line message of a CLI call that must be refused."""
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def noise(seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def files(tmp_path):
    """Two good images and one of each kind of bad input, by kind."""
    out = {"good": tmp_path / "good.png", "good2": tmp_path / "good2.jpg"}
    Image.fromarray(noise(0)).save(out["good"])
    Image.fromarray(noise(1)).save(out["good2"], quality=90)
    jpeg, png = out["good2"].read_bytes(), out["good"].read_bytes()
    out["truncated_jpeg"] = tmp_path / "cut.jpg"
    out["truncated_jpeg"].write_bytes(jpeg[:len(jpeg) // 2])
    out["truncated_png"] = tmp_path / "cut.png"
    out["truncated_png"].write_bytes(png[:len(png) // 2])
    out["empty"] = tmp_path / "empty.png"
    out["empty"].write_bytes(b"")
    out["not_an_image"] = tmp_path / "page.jpg"
    out["not_an_image"].write_text("<html>404 Not Found</html>")
    out["directory"] = tmp_path / "folder.png"
    out["directory"].mkdir()
    return out


BAD = {"truncated_jpeg": "truncated", "truncated_png": "truncated", "empty": "empty", "not_an_image": "not an image",
       "directory": "folder"}

# ----------------------------------------------------------------------------------------------------------------------
# Item 4: zero is a value
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["shapes", "export", "--task", "idc", "--split", "val", "--n", "0", "--out", "{tmp}/x"], "n must be an int >= 1"),
    (["shapes", "export", "--task", "cir", "--split", "val", "--n", "0", "--out", "{tmp}/x"], "n must be an int >= 1"),
    (["eval", "clip", "--n", "0"], "--n must be >= 10"),
    (["eval", "clip", "--n", "3"], "--n must be >= 10"),
    (["eval", "cir", "--method", "image", "--n", "0"], "n must be an int >= 1"),
    (["caption", "{good}", "{good}", "--checkpoint", "{tmp}/none", "--beam", "0"], "--beam must be an integer from 1"),
    (["caption", "{good}", "{good}", "--checkpoint", "{tmp}/none", "--beam", "100000"], "vocabulary size 49408"),
    (["eval", "clip4idc", "--checkpoint", "{tmp}/none", "--beam", "100000"], "vocabulary size 49408"),
    (["eval", "clip4idc", "--checkpoint", "{tmp}/none", "--beam", "-1"], "--beam must be an integer from 1"),
    (["eval", "clip4idc", "--checkpoint", "{tmp}/none", "--n", "0"], "--n must be >= 1"),
    (["retrieve", "--method", "image", "--image", "{good}", "--text", "x", "--gallery", "{tmp}", "--k", "0"],
     "--k must be >= 1"),
])
def test_zero_and_out_of_range_counts_are_refused_in_one_line(args, expected, files, tmp_path):
    args = [a.format(tmp=tmp_path, good=files["good"]) for a in args]
    assert expected in cli_error(*args)
    assert not (tmp_path / "x").exists()  # nothing was written before the check


def test_rank_and_search_refuse_k_zero():
    bench = CIRBenchmark("t", "val", "cirr", {"a": noise(0, 8), "b": noise(1, 8)}, {ALL: ("a", "b")},
                         [CIRQuery("0", "a", "cirr", {"caption": "x"}, ("b",))])
    retriever = cir.Baseline(backbones.load_clip("idc-micro"), "image")
    with pytest.raises(ValueError, match="k must be >= 1"):
        cir.rank(retriever, bench, k=0, progress=False)
    with pytest.raises(ValueError, match="k must be >= 1"):
        cir.GallerySearch(retriever, bench, progress=False).search("a", "x", k=0)


# ----------------------------------------------------------------------------------------------------------------------
# Item 5: images
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD))
def test_read_image_names_each_kind_of_bad_file(kind, files):
    with pytest.raises(ImageError, match=BAD[kind]) as exc:
        read_image(files[kind])
    assert str(files[kind]) in str(exc.value) and "\n" not in str(exc.value)


def test_a_truncated_file_is_refused_even_where_pil_would_pad_it(files, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries set it globally
    for kind in ("truncated_jpeg", "truncated_png"):
        with pytest.raises(ImageError, match="truncated"):
            read_image(files[kind])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    assert read_image(files["good"]).shape == (40, 40, 3)


@pytest.mark.parametrize("side", [40, 50])  # 1600 pixels: PIL only warns; 2500 > 2 x 1000: PIL raises
def test_a_decompression_bomb_is_refused(side, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(noise(0, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning escapes either
        with pytest.raises(ImageError, match="too large to decode safely.*MAX_IMAGE_PIXELS"):
            read_image(path)


def test_16_bit_grayscale_keeps_its_gradient(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))  # [8, 256], left to right
    expected = np.repeat(np.round(ramp / 257).astype(np.uint8)[:, :, None], 3, axis=2)  # [8, 256, 3]
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as im:
        assert im.mode.startswith("I")  # what a 16-bit PNG opens as
    np.testing.assert_array_equal(read_image(tmp_path / "ramp16.png"), expected)
    np.testing.assert_array_equal(read_image(Image.fromarray(ramp.astype(np.int32), mode="I")), expected)
    assert len(np.unique(expected)) == 256


@pytest.mark.parametrize("kind", ["empty", "directory", "truncated_png", "not_an_image"])
def test_caption_names_a_bad_image(kind, files, tmp_path):
    message = cli_error("caption", files["good"], files[kind], "--checkpoint", tmp_path / "none")
    assert str(files[kind]) in message and BAD[kind] in message


@pytest.mark.parametrize("kind", ["empty", "truncated_jpeg"])
def test_retrieve_names_a_bad_query_image(kind, files, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.fromarray(noise(2)).save(gallery / "a.png")
    message = cli_error("retrieve", "--method", "image", "--image", files[kind], "--text", "x", "--gallery", gallery)
    assert str(files[kind]) in message and BAD[kind] in message


@pytest.fixture
def bad_gallery(tmp_path):
    gallery = tmp_path / "gallery"
    (gallery / "sub").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(noise(k)).save(gallery / f"{k}.png")
    (gallery / "sub" / "empty.jpg").write_bytes(b"")
    (gallery / "sub" / "notes.png").write_text("not an image")
    png = (gallery / "0.png").read_bytes()
    (gallery / "cut.png").write_bytes(png[:len(png) // 2])
    return gallery, ["sub/empty.jpg", "sub/notes.png", "cut.png"]


def test_a_gallery_with_bad_files_is_refused_with_all_of_them_listed(bad_gallery):
    gallery, bad = bad_gallery
    message = cli_error("retrieve", "--method", "image", "--image", gallery / "0.png", "--text", "x",
                        "--gallery", gallery)
    assert "3 of the 6 gallery images cannot be read" in message and "--skip-bad-images" in message
    assert all(name in message for name in bad)
    assert "download" not in message.lower()  # a user's own folder: nothing to re-download


def test_skip_bad_images_leaves_them_out_with_a_warning(bad_gallery, capsys):
    gallery, bad = bad_gallery
    with pytest.warns(UserWarning, match="Left out 3 of the 6 gallery images") as record:
        cli.main(["retrieve", "--method", "image", "--image", str(gallery / "1.png"), "--text", "x",
                  "--gallery", str(gallery), "--k", "10", "--skip-bad-images"])
    assert all(name in str(record[0].message) for name in bad)
    top = json.loads(capsys.readouterr().out)["top"]
    assert sorted(t["image"] for t in top) == sorted(str(gallery / f"{k}.png") for k in range(3))
    assert top[0]["image"] == str(gallery / "1.png")  # the query image itself


def test_the_real_command_prints_one_line_for_a_bad_gallery(bad_gallery):
    gallery, bad = bad_gallery
    proc = subprocess.run([sys.executable, "-m", "idclab.cli", "retrieve", "--method", "image", "--image",
                           str(gallery / "0.png"), "--text", "x", "--gallery", str(gallery)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(name in errors[0] for name in bad)


def test_image_folder_names_a_bad_file(bad_gallery):
    gallery, _ = bad_gallery
    data = ImageFolder(gallery)
    i = data.names.index("sub/empty.jpg")
    with pytest.raises(ImageError, match="empty.jpg is empty"):
        data[i]


def test_check_readable_finds_every_bad_file_even_where_pil_would_pad(files, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    paths = [files[k] for k in ("good", "good2", *sorted(BAD))]
    assert check_readable(paths) == [files[k] for k in sorted(BAD)]


# ----------------------------------------------------------------------------------------------------------------------
# Item 6: text
# ----------------------------------------------------------------------------------------------------------------------


def test_tokenize_warns_how_much_a_long_text_loses_and_matches_open_clip():
    long = " ".join(["red"] * 100)  # 100 tokens + start + end
    with pytest.warns(UserWarning, match=r"text 1 lost 25 of its 100 tokens"):
        ids = backbones.tokenize(["a cube", long], context_length=77)
    torch.testing.assert_close(ids, backbones.get_tokenizer()(["a cube", long], context_length=77))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit max_words (CLIP4IDC's 32-token captions) is cut silently
        ids = backbones.tokenize([long], context_length=77, max_words=32)
    torch.testing.assert_close(ids[:, :32], backbones.get_tokenizer()([long], context_length=32))


def test_compose_cuts_the_longest_field_and_keeps_the_template():
    query = CIRQuery("q7", "a", "fashioniq", {"cap1": " ".join(["blue"] * 40), "cap2": "is long"})
    template = "a photo of * , {cap2} and {cap1}"
    with pytest.warns(UserWarning, match=r"Query 'q7'.*cap1: \d+ of 40 tokens"):
        text = cir.compose(template, query, context_length=20)
    assert text.startswith("a photo of * , is long and blue")
    assert int(backbones.tokenize(text, context_length=77).argmax()) + 1 <= 20  # fits with start and end
    assert cir.compose(template, query) == template.format(cap1=query.fields["cap1"], cap2="is long")  # no cut


@pytest.fixture(scope="module")
def pic2word_model():
    return p.Pic2Word(p.config_for(profile="smoke")).eval()  # context 32


def test_a_long_query_never_loses_the_placeholder(pic2word_model):
    r = p.Pic2WordRetriever(pic2word_model, prompts={"cirr": "{caption} , in a photo of *"}, device="cpu")
    query = CIRQuery("long", "a", "cirr", {"caption": " ".join(["make it red"] * 20)})  # 60 tokens > 32
    with pytest.warns(UserWarning, match=r"Query 'long'.*more than the 32 .*caption: \d+ of 60 tokens"):
        (text,) = r.texts([query])
    assert text.endswith(" , in a photo of *")
    with pytest.warns(UserWarning, match="Query 'long'"):
        out = r.encode_query(torch.randn(1, 32), [query])  # before: the cut dropped "*" and this raised
    assert out.shape == (1, 32) and bool(torch.isfinite(out).all())


def test_a_users_asterisk_is_not_the_placeholder(pic2word_model):
    model = pic2word_model
    r = p.Pic2WordRetriever(model, device="cpu")  # "a photo of * , {caption}"
    query = CIRQuery("star", "a", "cirr", {"caption": "add a * on the cube"})
    v = torch.randn(1, 32)
    tokens = backbones.tokenize(r.texts([query]), context_length=32)  # [1, 32]
    star = backbones.token_id("*")
    # SOT a photo of * , add a * ...: the template's "*" at 4, the user's at 8
    assert (tokens[0] == star).nonzero().flatten().tolist() == [4, 8]

    def only_position_4(module, inputs, output):  # by hand: the pseudo-word at the template's "*" only
        output = output.clone()
        output[0, 4] = model.mapping(v)[0].to(output.dtype)
        return output

    handle = model.clip.token_embedding.register_forward_hook(only_position_4)
    try:
        with torch.no_grad():
            expected = F.normalize(backbones.encode_text(model.clip, tokens).float(), dim=-1)
    finally:
        handle.remove()
    torch.testing.assert_close(r.encode_query(v, [query]), expected, rtol=1e-5, atol=1e-5)


def test_a_prompt_with_two_placeholders_is_refused():
    with pytest.raises(ValueError, match="has 2 placeholders"):
        cir.check_prompts({"cirr": "a photo of * and * , {caption}"}, placeholder="*")


# ----------------------------------------------------------------------------------------------------------------------
# Item 8: the gallery feature cache keys on the files, not only their names
# ----------------------------------------------------------------------------------------------------------------------


def test_the_feature_cache_sees_a_replaced_image(tmp_path):
    paths = {f"{k}.png": tmp_path / f"{k}.png" for k in range(2)}
    for k, path in enumerate(paths.values()):
        Image.fromarray(noise(k)).save(path)
    bench = CIRBenchmark("folder", "x", "coco", dict(paths), {ALL: tuple(paths)}, [])
    retriever = cir.Baseline(backbones.load_clip("idc-micro"), "image")
    names = list(paths)
    first = cir.image_features(retriever, bench, names, cache_dir=tmp_path / "cache", progress=False)

    def no_encoding(images):
        raise AssertionError("the cache should have answered")

    real_encode, retriever.encode_image = retriever.encode_image, no_encoding
    torch.testing.assert_close(cir.image_features(retriever, bench, names, cache_dir=tmp_path / "cache",
                                                  progress=False), first)  # unchanged files: a cache hit
    retriever.encode_image = real_encode
    stat = paths["0.png"].stat()
    Image.fromarray(noise(7)).save(paths["0.png"])  # same name, same size in pixels, new content
    os.utime(paths["0.png"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # even within the clock's resolution
    again = cir.image_features(retriever, bench, names, cache_dir=tmp_path / "cache", progress=False)
    fresh = cir.image_features(retriever, bench, names, progress=False)
    torch.testing.assert_close(again, fresh)
    assert not torch.allclose(again[0], first[0]) and torch.allclose(again[1], first[1])
