"""FashionIQ evaluation captions of the Combiner: as in its reference code, each of the two captions loses ".?, " at
both ends before they are joined with " and " (training does the same); other methods and kinds keep their text."""

from __future__ import annotations

import pytest

from idclab import backbones, cir
from idclab.cir import ALL, CIRQuery
from idclab.models import combiner as c


def fiq_query(cap1: str, cap2: str) -> CIRQuery:
    return CIRQuery(id="dress/0", reference="a", kind="fashioniq", fields={"cap1": cap1, "cap2": cap2},
                    targets=("b",), group="dress", gallery="dress")


def cirr_query(caption: str) -> CIRQuery:
    return CIRQuery(id="0", reference="a", kind="cirr", fields={"caption": caption}, targets=("b",), gallery=ALL)


@pytest.fixture(scope="module")
def clip():
    return backbones.load_clip("shapes-clip")


def test_compose_strips_the_given_characters_from_each_field():
    q = fiq_query("is red.", " has sleeves?")
    assert cir.compose("{cap1} and {cap2}", q, strip=".?, ") == "is red and has sleeves"
    assert cir.compose("{cap1} and {cap2}", q) == "is red. and has sleeves?"  # default: whitespace only
    # only the ends: inner punctuation stays; "," and " " go too, as in the reference
    q = fiq_query(", is red, not blue. ", "has sleeves, ?")
    assert cir.compose("{cap1} and {cap2}", q, strip=".?, ") == "is red, not blue and has sleeves"
    with pytest.raises(ValueError, match="empty modification text"):  # nothing left: still refused
        cir.compose("{cap1} and {cap2}", fiq_query("?.", "ok"), strip=".?, ")


def test_the_combiner_evaluates_fashioniq_with_the_references_caption_cleaning(clip):
    retriever = c.SumRetriever(clip, device="cpu")
    # The reference: "{c1.strip('.?, ')} and {c2.strip('.?, ')}", written out by hand.
    assert retriever.texts([fiq_query("is red.", " has sleeves?")]) == ["is red and has sleeves"]
    assert retriever.texts([fiq_query("is shorter, ", "?is blue.")]) == ["is shorter and is blue"]
    assert retriever.describe()["field_strip"] == {"fashioniq": ".?, "}
    assert issubclass(c.CombinerRetriever, c.SumRetriever)  # stage 2 composes its text the same way
    # CIRR captions keep their punctuation (the reference uses them as they are).
    assert retriever.texts([cirr_query("is red.")]) == ["is red."]


def test_the_baselines_keep_pic2words_raw_captions(clip):
    # Pic2Word's evaluation joins the raw captions, second first; only whitespace is trimmed.
    text = cir.Baseline(clip, "text", device="cpu")
    assert text.texts([fiq_query("is red.", " has sleeves?")]) == ["has sleeves? and is red."]
    assert "field_strip" not in text.describe()
