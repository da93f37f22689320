"""The composed-image-retrieval (CIR) harness shared by Pic2Word and the Combiner.

A benchmark is data (:class:`~idclab.data.cir_benchmark.CIRBenchmark`, built by the loaders of ``idclab.data``): a
table of images by name, one or more galleries and queries. A method is a *retriever* with two calls,
``encode_gallery`` and ``encode_query``, on top of raw CLIP image features that the harness computes once per image
and caches on disk. The harness checks the benchmark (missing or unreadable images are listed, never dropped), ranks
the gallery by exact chunked search and scores each benchmark by its own protocol:

================  ==================================================  ========================================
protocol          metrics                                             reference image
================  ==================================================  ========================================
``cirr``          R@1/5/10/50 and R_subset@1/2/3 (CIRR's image set)   removed from the ranking
``fashioniq``     R@10/50 per category (each its own gallery), mean   kept (FashionIQ's protocol)
``circo``         mAP@5/10/25/50 (all ground truths), R@K of target   kept
``imagenet_r``    fractional R@10/50 per domain (Pic2Word) + hit R@K  kept (query photos are distractors)
``coco``          R@1/5/10                                            not in the gallery (a crop)
``shapes``        R@1/5/10 per task, R_subset@1/2/3                   removed (as CIRR)
================  ==================================================  ========================================

ImageNet-R averages over every (photo, domain) query, as Pic2Word does: a photo whose class has no image in the
domain has no target and scores 0. Beside it, ``R@K_with_target`` averages over the queries that have a target.

Every evaluation can print the image-only, text-only and image+text-sum baselines beside the method (:func:`compare`).

The package, by job:

* :mod:`idclab.cir.retrievers` -- prompts, :class:`CLIPRetriever` (the interface) and the :class:`Baseline` rows;
* :mod:`idclab.cir.evaluation` -- cached image features, ranking, each protocol's scores, :func:`compare`, :func:`table`;
* :mod:`idclab.cir.submissions` -- CIRR and CIRCO test-server files;
* :mod:`idclab.cir.search` -- interactive search over a gallery or a folder.

The benchmark types, their checks, the Shapes benchmark and :func:`load_benchmark` live in ``idclab.data``
(:mod:`idclab.data.cir_benchmark`, :mod:`idclab.data.cir_registry`) and are re-exported here, so ``cir.CIRQuery``,
``cir.load_benchmark`` and the rest work from this one namespace.
"""

from idclab.cir.evaluation import (EXCLUDES_REFERENCE, RECALL_KS, SUBSET_KS, Ranking, compare, evaluate,
                                   image_features, needed_images, rank, score, table)
from idclab.cir.retrievers import TEXT_PROMPTS, Baseline, CLIPRetriever, check_prompts, compose, template_fields
from idclab.cir.search import GallerySearch, retrieve
from idclab.cir.submissions import (CIRCO_SUBMISSION_TOP, CIRR_SUBMISSION_TOP, circo_submission, cirr_submission,
                                    validate_cirr_submission)
from idclab.data.cir_benchmark import (ALL, KINDS, OPTIONAL_FIELDS, PROTOCOLS, CIRBenchmark, CIRQuery, ImageSource,
                                       check_benchmark, missing_files)
from idclab.data.cir_registry import BENCHMARKS, SHAPES_DOMAIN_NOUN, load_benchmark, shapes_benchmark
from idclab.images import read_image

__all__ = [
    # benchmarks (idclab.data)
    "ALL", "KINDS", "OPTIONAL_FIELDS", "PROTOCOLS", "ImageSource", "CIRQuery", "CIRBenchmark", "check_benchmark",
    "missing_files", "read_image", "BENCHMARKS", "SHAPES_DOMAIN_NOUN", "load_benchmark", "shapes_benchmark",
    # retrievers
    "TEXT_PROMPTS", "template_fields", "compose", "check_prompts", "CLIPRetriever", "Baseline",
    # evaluation
    "RECALL_KS", "SUBSET_KS", "EXCLUDES_REFERENCE", "image_features", "Ranking", "rank", "needed_images", "score",
    "evaluate", "compare", "table",
    # submissions
    "CIRR_SUBMISSION_TOP", "CIRCO_SUBMISSION_TOP", "cirr_submission", "validate_cirr_submission", "circo_submission",
    # interactive search
    "GallerySearch", "retrieve",
]
