"""idclab.metrics.retrieval: chunked top-k equals the full matrix; every metric against numbers worked out by hand."""

import pytest
import torch

from idclab.metrics import (
    map_at_k,
    recall_at_k,
    recall_at_k_multi,
    recall_fraction_at_k,
    recall_subset_at_k,
    retrieval_metrics,
    topk_search,
)


def reference_topk(queries, gallery, k, exclude=None):
    """The full Q x G matrix, then a stable sort: ties go to the lower gallery index."""
    sim = queries.float() @ gallery.float().T
    if exclude is not None:
        rows = (exclude >= 0).nonzero()[:, 0]
        sim[rows, exclude[rows]] = float("-inf")
    s, i = sim.sort(dim=1, descending=True, stable=True)
    return s[:, :k], i[:, :k]


# ---- topk_search -------------------------------------------------------------------------------------------------

CHUNKS = [  # (gallery_chunk, query_chunk, k) -- including chunks that divide neither Q=37 nor G=101, k=1, k=G
    (16384, 1024, 10),
    (7, 5, 10),
    (1, 1, 1),
    (10, 37, 1),
    (33, 4, 101),
    (101, 36, 50),
    (100, 38, 3),
]


@pytest.mark.parametrize("gallery_chunk, query_chunk, k", CHUNKS)
def test_topk_equals_torch_topk_on_random_features(gallery_chunk, query_chunk, k):
    g = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(101, 16, generator=g), dim=-1)
    s, i = topk_search(queries, gallery, k, gallery_chunk=gallery_chunk, query_chunk=query_chunk)
    ref_s, ref_i = (queries @ gallery.T).topk(k, dim=1)
    assert s.shape == (37, k) and i.shape == (37, k) and s.dtype == torch.float32 and i.dtype == torch.long
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, ref_s, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gallery_chunk, query_chunk, k", CHUNKS)
def test_topk_ties_go_to_the_lower_index(gallery_chunk, query_chunk, k):
    # Small integer features: exact dot products with many ties, so the tie rule decides the order.
    g = torch.Generator().manual_seed(1)
    queries = torch.randint(-2, 3, (37, 4), generator=g).float()
    gallery = torch.randint(-2, 3, (101, 4), generator=g).float()
    s, i = topk_search(queries, gallery, k, gallery_chunk=gallery_chunk, query_chunk=query_chunk)
    ref_s, ref_i = reference_topk(queries, gallery, k)
    assert torch.equal(s, ref_s) and torch.equal(i, ref_i)


def test_topk_identical_gallery_items_rank_by_index():
    gallery = torch.ones(10, 3)
    queries = torch.randn(4, 3)
    _, i = topk_search(queries, gallery, 6, gallery_chunk=4)
    assert i.tolist() == [[0, 1, 2, 3, 4, 5]] * 4


@pytest.mark.parametrize("gallery_chunk, query_chunk", [(16384, 1024), (3, 2), (1, 1)])
def test_topk_exclude(gallery_chunk, query_chunk):
    g = torch.Generator().manual_seed(2)
    queries = torch.randint(-2, 3, (9, 4), generator=g).float()
    gallery = torch.randint(-2, 3, (12, 4), generator=g).float()
    exclude = torch.tensor([0, 11, -1, 5, 5, -1, 3, 7, 2])
    s, i = topk_search(queries, gallery, 11, exclude=exclude, gallery_chunk=gallery_chunk, query_chunk=query_chunk)
    ref_s, ref_i = reference_topk(queries, gallery, 11, exclude)
    assert torch.equal(i, ref_i) and torch.equal(s, ref_s)
    for q, e in enumerate(exclude.tolist()):
        assert e not in i[q].tolist() or e == -1
    assert torch.isfinite(s).all()


def test_topk_query_itself_is_removed_cirr_style():
    # 4 one-hot gallery images; the query looks most like image 0, its own reference. CIRR drops it.
    gallery = torch.eye(4)
    queries = torch.tensor([[0.9, 0.5, 0.1, 0.0]])
    assert topk_search(queries, gallery, 2)[1].tolist() == [[0, 1]]
    assert topk_search(queries, gallery, 2, exclude=torch.tensor([0]))[1].tolist() == [[1, 2]]
    targets = torch.tensor([1])
    assert retrieval_metrics(queries, gallery, targets, ks=(1, 2)) == {"R@1": 0.0, "R@2": 100.0}
    assert retrieval_metrics(queries, gallery, targets, ks=(1, 2), exclude=torch.tensor([0])) == {
        "R@1": 100.0,
        "R@2": 100.0,
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_topk_any_float_dtype_computes_in_float32(dtype):
    g = torch.Generator().manual_seed(3)
    queries = torch.randint(-3, 4, (6, 8), generator=g).to(dtype)
    gallery = torch.randint(-3, 4, (20, 8), generator=g).to(dtype)
    s, i = topk_search(queries, gallery, 5, gallery_chunk=6)
    ref_s, ref_i = reference_topk(queries.float(), gallery.float(), 5)
    assert s.dtype == torch.float32 and torch.equal(s, ref_s) and torch.equal(i, ref_i)


@pytest.mark.gpu
def test_topk_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    queries = torch.randint(-2, 3, (300, 32), generator=g).half()
    gallery = torch.randint(-2, 3, (5000, 32), generator=g).half()
    exclude = torch.randint(-1, 5000, (300,), generator=g)
    cpu = topk_search(queries, gallery, 50, exclude=exclude, gallery_chunk=999, query_chunk=128)
    gpu = topk_search(queries.cuda(), gallery.cuda(), 50, exclude=exclude.cuda(), gallery_chunk=999, query_chunk=128)
    assert gpu[0].is_cuda
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


def test_topk_empty_queries():
    s, i = topk_search(torch.zeros(0, 4), torch.randn(5, 4), 3)
    assert s.shape == (0, 3) and i.shape == (0, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=11), r"k=11 is larger than the gallery \(10 items\)"),
        (dict(k=0), r"k must be a positive int"),
        (dict(k=2.0), r"k must be a positive int"),
        (dict(k=3, gallery=torch.randn(10, 5)), r"queries have dimension 4 but gallery items have 5"),
        (dict(k=3, queries=torch.randn(4)), r"queries must be a 2-D \[N, D\] tensor"),
        (dict(k=3, gallery=torch.ones(10, 4, dtype=torch.long)), r"gallery must be floating point"),
        (dict(k=3, queries=torch.full((3, 4), float("nan"))), r"queries contain NaN or inf"),
        (dict(k=3, exclude=torch.tensor([0, 1])), r"exclude must be a 1-D tensor with one entry per query \(3\)"),
        (dict(k=3, exclude=torch.tensor([0, 1, 10])), r"exclude values must be gallery indices in \[0, 10\)"),
        (dict(k=10, exclude=torch.tensor([0, -1, -1])), r"k=10 but excluding one item leaves 9 candidates"),
        (dict(k=3, gallery_chunk=0), r"gallery_chunk must be a positive int"),
    ],
)
def test_topk_errors(kwargs, match):
    args = dict(queries=torch.randn(3, 4), gallery=torch.randn(10, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        topk_search(args.pop("queries"), args.pop("gallery"), args.pop("k"), **args)


def test_topk_k_equals_gallery_with_no_exclusion_is_allowed():
    _, i = topk_search(torch.randn(3, 4), torch.randn(10, 4), 10, exclude=torch.tensor([-1, -1, -1]))
    assert sorted(i[0].tolist()) == list(range(10))


# ---- recall_at_k / recall_at_k_multi -----------------------------------------------------------------------------


def test_recall_at_k_by_hand():
    indices = torch.tensor([[3, 1, 2], [0, 2, 1], [1, 0, 3]])
    targets = torch.tensor([3, 2, 5])  # ranks: 1st, 2nd, not retrieved
    out = recall_at_k(indices, targets, ks=(1, 2, 3))
    assert list(out) == ["R@1", "R@2", "R@3"]
    assert out["R@1"] == pytest.approx(100 / 3)
    assert out["R@2"] == pytest.approx(200 / 3)
    assert out["R@3"] == pytest.approx(200 / 3)


def test_recall_at_k_multi_by_hand():
    indices = torch.tensor([[4, 1, 2], [0, 2, 1]])
    positives = [{1, 7}, {9}]  # query 0: first positive at rank 2; query 1: none retrieved
    assert recall_at_k_multi(indices, positives, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 50.0, "R@3": 50.0}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: recall_at_k(torch.tensor([[0, 1]]), torch.tensor([0]), ks=(1, 5)), r"R@K with K=5 .*only 2 columns"),
        (
            lambda: recall_at_k(torch.tensor([[0, 1]]), torch.tensor([0, 1]), ks=(1,)),
            r"targets must be a 1-D tensor .* \(1\)",
        ),
        (lambda: recall_at_k(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long)), r"no queries"),
        (lambda: recall_at_k(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), ks=(1,)), r"integer tensor"),
        (lambda: recall_at_k(torch.tensor([[0, 1]]), torch.tensor([0]), ks=(0,)), r"ks must be positive ints"),
        (lambda: recall_at_k_multi(torch.tensor([[0, 1]]), [set()], ks=(1,)), r"no positives, e.g. query 0"),
        (lambda: recall_at_k_multi(torch.tensor([[0, 1]]), [{0}, {1}], ks=(1,)), r"list of 1 collections"),
    ],
)
def test_recall_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- CIRR R_subset@K ---------------------------------------------------------------------------------------------

GALLERY_2D = torch.tensor(
    [[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]  # items 2 and 5 are identical
)


def test_recall_subset_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    members = torch.tensor([[1, 2, 3, 4], [0, 1, 5, 2], [3, 0, 4, 1]])
    targets = torch.tensor([2, 5, 0])
    # query 0: member scores 1:.8  2:.6  3:0  4:-1         -> target 2 is 2nd
    # query 1: member scores 0:0   1:.6  5:.8  2:.8 (tie)  -> 2 beats 5 (lower index) -> target 5 is 2nd
    # query 2: member scores 3:0   0:1   4:-1  1:.8        -> target 0 is 1st
    out = recall_subset_at_k(queries, GALLERY_2D, members, targets, ks=(1, 2, 3))
    assert list(out) == ["R_subset@1", "R_subset@2", "R_subset@3"]
    assert out["R_subset@1"] == pytest.approx(100 / 3)
    assert out["R_subset@2"] == 100.0 and out["R_subset@3"] == 100.0
    # chunking does not change anything
    assert recall_subset_at_k(queries, GALLERY_2D, members, targets, ks=(1, 2, 3), query_chunk=1) == out


def test_recall_subset_agrees_with_a_full_ranking_restricted_to_members():
    g = torch.Generator().manual_seed(5)
    queries, gallery = torch.randn(40, 8, generator=g), torch.randn(60, 8, generator=g)
    members = torch.stack([torch.randperm(60, generator=g)[:5] for _ in range(40)])
    targets = members[torch.arange(40), torch.randint(0, 5, (40,), generator=g)]
    _, full = topk_search(queries, gallery, 60)
    ranks = []
    for q in range(40):
        order = [i for i in full[q].tolist() if i in set(members[q].tolist())]
        ranks.append(order.index(int(targets[q])))
    expected = {f"R_subset@{k}": 100.0 * sum(r < k for r in ranks) / 40 for k in (1, 2, 3)}
    out = recall_subset_at_k(queries, gallery, members, targets)
    assert out == pytest.approx(expected)


@pytest.mark.parametrize(
    "members, targets, ks, match",
    [
        ([[1, 2, 3, 4]], [5], (1,), r"not among their query's members, e.g. query 0 \(target 5"),
        ([[1, 2, 2, 4]], [1], (1,), r"members of query 0 repeat a gallery index"),
        ([[1, 2, 3, 9]], [1], (1,), r"members must be gallery indices in \[0, 6\)"),
        ([[1, 2]], [1], (1, 2, 3), r"R_subset@K with K=3 .*members has 2 columns"),
    ],
)
def test_recall_subset_errors(members, targets, ks, match):
    with pytest.raises(ValueError, match=match):
        recall_subset_at_k(torch.tensor([[1.0, 0.0]]), GALLERY_2D, torch.tensor(members), torch.tensor(targets), ks)


# ---- CIRCO mAP@K -------------------------------------------------------------------------------------------------


def test_map_at_k_by_hand():
    indices = torch.tensor([[10, 11, 12, 13, 14], [5, 6, 7, 8, 9], [1, 2, 3, 4, 0]])
    positives = [{11, 13, 20}, {5}, {0, 1, 2, 3, 4, 5, 6}]
    # query 0: rel = 0 1 0 1 0, P@2 = 1/2, P@4 = 2/4, |GT| = 3
    #   AP@1 = 0;  AP@2 = (1/2) / min(3, 2) = 1/4;  AP@5 = (1/2 + 2/4) / min(3, 5) = 1/3
    # query 1: rel = 1 0 0 0 0 -> AP@K = 1 for every K
    # query 2: rel = 1 1 1 1 1, |GT| = 7 -> AP@5 = 5 / min(7, 5) = 1 (it would be 5/7 with 1/|GT|)
    out = map_at_k(indices, positives, ks=(1, 2, 5))
    assert list(out) == ["mAP@1", "mAP@2", "mAP@5"]
    assert out["mAP@1"] == pytest.approx(100 * (0 + 1 + 1) / 3)
    assert out["mAP@2"] == pytest.approx(100 * (1 / 4 + 1 + 1) / 3)  # 75
    assert out["mAP@5"] == pytest.approx(100 * (1 / 3 + 1 + 1) / 3)  # 77.78


def test_map_at_k_errors():
    with pytest.raises(ValueError, match=r"mAP@K with K=50 .*only 5 columns"):
        map_at_k(torch.arange(5)[None], [{1}])  # default ks go up to 50
    with pytest.raises(ValueError, match=r"query 0 lists a gallery index twice"):
        map_at_k(torch.tensor([[1, 2, 1]]), [{1}], ks=(3,))
    with pytest.raises(ValueError, match=r"no positives, e.g. query 1"):
        map_at_k(torch.tensor([[1, 2], [3, 4]]), [{1}, []], ks=(2,))


# ---- Pic2Word ImageNet-R fractional recall ---------------------------------------------------------------------


def test_recall_fraction_by_hand():
    gallery_labels = torch.tensor([0, 0, 1, 1, 1, 2])  # label 1 has 3 relevant items, label 0 has 2
    query_labels = torch.tensor([1, 0])
    indices = torch.tensor([[2, 0, 3, 5], [1, 2, 0, 3]])
    # query 0 (label 1): relevant at ranks 1 and 3 -> 1/3, 1/3, 2/3 of its 3 relevant items
    # query 1 (label 0): relevant at ranks 1 and 3 -> 1/2, 1/2, 2/2
    out = recall_fraction_at_k(indices, gallery_labels, query_labels, ks=(1, 2, 3))
    assert out["R@1"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)  # 41.67
    assert out["R@2"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
    assert out["R@3"] == pytest.approx(100 * (2 / 3 + 1) / 2)  # 83.33
    # a hit rate on the same ranking would say 100 at K=1: the two definitions differ
    hit = recall_at_k_multi(indices, [{2, 3, 4}, {0, 1}], ks=(1,))
    assert hit["R@1"] == 100.0


def test_recall_fraction_scores_a_query_without_relevant_items_zero_when_asked():
    # Pic2Word's ImageNet-R mean runs over every query of a domain; a photo whose class has no image in the domain
    # (label 9 below, carried by no gallery item) counts as 0 instead of leaving the mean.
    gallery_labels = torch.tensor([0, 0, 1, 1, 1, 2])
    query_labels = torch.tensor([1, 0, 9])
    indices = torch.tensor([[2, 0, 3, 5], [1, 2, 0, 3], [0, 2, 3, 5]])
    # per query, R@1: 1/3, 1/2, 0 ; R@3: 2/3, 2/2, 0
    out = recall_fraction_at_k(indices, gallery_labels, query_labels, ks=(1, 3), without_relevant="zero")
    assert out["R@1"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 0) / 3)  # 27.78
    assert out["R@3"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)  # 55.56
    with pytest.raises(ValueError, match=r"without_relevant='zero'"):  # the default still refuses
        recall_fraction_at_k(indices, gallery_labels, query_labels, ks=(1,))
    with pytest.raises(ValueError, match=r"without_relevant must be 'raise' or 'zero'"):
        recall_fraction_at_k(indices, gallery_labels, query_labels, ks=(1,), without_relevant="drop")


def test_recall_fraction_errors():
    gallery_labels = torch.tensor([0, 0, 1])
    indices = torch.tensor([[0, 1], [2, 0]])
    with pytest.raises(ValueError, match=r"1 query\(ies\) have no relevant gallery item, e.g. query 1 \(label 7\)"):
        recall_fraction_at_k(indices, gallery_labels, torch.tensor([0, 7]), ks=(1,))
    with pytest.raises(ValueError, match=r"R@K with K=50 .*only 2 columns"):  # default ks = (10, 50)
        recall_fraction_at_k(indices, gallery_labels, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"indices must be gallery indices in \[0, 3\)"):
        recall_fraction_at_k(torch.tensor([[0, 3]]), gallery_labels, torch.tensor([0]), ks=(1,))
