"""Metrics: caption scores (pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and retrieval scores.

``captioning`` wraps the COCO caption evaluation used by image difference captioning papers; ``retrieval`` has an
exact chunked top-k search and the composed-image-retrieval metrics (R@K, CIRR's R_subset@K, CIRCO's mAP@K,
Pic2Word's fractional recall on ImageNet-R). Retrieval numbers are percentages, caption numbers are fractions
(CIDEr on its 0-10 scale), each as its papers' reference code returns them.
"""

from idclab.metrics.captioning import (
    METRIC_NAMES,
    JavaNotFoundError,
    load_caption_json,
    score_captions,
    score_captions_by_group,
)
from idclab.metrics.retrieval import (
    map_at_k,
    recall_at_k,
    recall_at_k_multi,
    recall_fraction_at_k,
    recall_subset_at_k,
    retrieval_metrics,
    topk_search,
)

__all__ = [
    "METRIC_NAMES",
    "JavaNotFoundError",
    "load_caption_json",
    "score_captions",
    "score_captions_by_group",
    "topk_search",
    "recall_at_k",
    "recall_at_k_multi",
    "recall_subset_at_k",
    "map_at_k",
    "recall_fraction_at_k",
    "retrieval_metrics",
]
