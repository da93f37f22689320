"""Test-server files: CIRR's two JSON files (recall, recall_subset) and CIRCO's, for splits whose targets are hidden.

Each is written from one :func:`~idclab.cir.evaluation.rank` of the retriever; the CIRR files are checked against
the server's documented format before they are returned (:func:`validate_cirr_submission`).
"""

from __future__ import annotations

import json
from pathlib import Path

from idclab.cir.evaluation import EXCLUDES_REFERENCE, rank
from idclab.cir.retrievers import CLIPRetriever
from idclab.data.cir_benchmark import CIRBenchmark

CIRR_SUBMISSION_TOP = 50  # the CIRR server reads the top 50 (recall) and the top 3 within the subset (recall_subset)
CIRCO_SUBMISSION_TOP = 50


def cirr_submission(retriever: CLIPRetriever, bench: CIRBenchmark, out_dir: str | Path, *, name: str | None = None,
                    cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True
                    ) -> tuple[Path, Path]:
    """Write CIRR's two test-server files for every query of ``bench`` (test1: all 4,148 pair ids).

    ``recall_submission_<name>.json``: {"version": "rc2", "metric": "recall", "<pairid>": [top-50 image names]};
    ``recall_subset_submission_<name>.json``: the same with "recall_subset" and the top 3 of the image set (reference
    removed). Checked with :func:`validate_cirr_submission` before returning.
    """
    if bench.protocol not in EXCLUDES_REFERENCE:
        raise ValueError(f"{bench.name} is not a CIRR-layout benchmark (protocol {bench.protocol!r}).")
    if any(len(q.subset) != 6 for q in bench.queries):
        raise ValueError("Every CIRR query needs its 6 image-set members (subset) for the recall_subset file.")
    ranking = rank(retriever, bench, k=CIRR_SUBMISSION_TOP, cache_dir=cache_dir, batch_size=batch_size,
                   progress=progress)
    recall: dict[str, object] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, object] = {"version": "rc2", "metric": "recall_subset"}
    for g, rows in ranking.rows.items():
        names, pos = ranking.gallery_names[g], {n: i for i, n in enumerate(ranking.gallery_names[g])}
        for r, i in enumerate(rows):
            q = ranking.queries[i]
            recall[q.id] = [names[j] for j in ranking.indices[g][r].tolist()]
            members = [m for m in q.subset if m != q.reference]
            s = ranking.gallery_feats[g][[pos[m] for m in members]] @ ranking.query_feats[g][r]  # [5]
            order = sorted(range(len(members)), key=lambda j: (-float(s[j]), pos[members[j]]))  # ties: lower index
            subset[q.id] = [members[j] for j in order[:3]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or retriever.method
    paths = out / f"recall_submission_{name}.json", out / f"recall_subset_submission_{name}.json"
    for path, obj in zip(paths, (recall, subset)):
        path.write_text(json.dumps(obj))
    validate_cirr_submission(*paths, bench=bench)
    return paths


def validate_cirr_submission(recall_path: str | Path, subset_path: str | Path, *, bench: CIRBenchmark) -> None:
    """Check both files against CIRR's documented format: version rc2, the metric names, every pair id of ``bench``
    and nothing else, 50 distinct gallery names per pair (3 distinct set members, reference excluded), <= 5 MB."""
    problems = []
    queries = {q.id: q for q in bench.queries}
    for path, metric, top in ((recall_path, "recall", CIRR_SUBMISSION_TOP), (subset_path, "recall_subset", 3)):
        path = Path(path)
        if path.stat().st_size > 5 * 2**20:
            problems.append(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the server takes at most 5 MB")
        data = json.loads(path.read_text())
        if data.get("version") != "rc2" or data.get("metric") != metric:
            problems.append(f"{path.name}: version/metric must be 'rc2'/{metric!r}, got "
                            f"{data.get('version')!r}/{data.get('metric')!r}")
        ids = set(data) - {"version", "metric"}
        if ids != set(queries):
            problems.append(f"{path.name}: {len(set(queries) - ids)} pair ids missing, {len(ids - set(queries))} extra")
        for pid in ids & set(queries):
            q, names = queries[pid], data[pid]
            allowed = set(bench.galleries[q.gallery]) if metric == "recall" else set(q.subset)
            if (len(names) != min(top, len(allowed) - 1) or len(set(names)) != len(names) or q.reference in names
                    or not set(names) <= allowed):
                problems.append(f"{path.name}: pair {pid} must list {top} distinct {'gallery' if top == 50 else 'set'} "
                                f"names without its reference")
                break
    if problems:
        raise ValueError("Invalid CIRR submission:\n  " + "\n  ".join(problems))


def circo_submission(retriever: CLIPRetriever, bench: CIRBenchmark, path: str | Path, *,
                     cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True) -> Path:
    """Write CIRCO's test-server file: {"<query id>": [top-50 distinct integer image ids]} for every query."""
    if bench.protocol != "circo":
        raise ValueError(f"{bench.name} is not CIRCO (protocol {bench.protocol!r}).")
    ranking = rank(retriever, bench, k=CIRCO_SUBMISSION_TOP, cache_dir=cache_dir, batch_size=batch_size,
                   progress=progress)
    out = {}
    for g, rows in ranking.rows.items():
        names = ranking.gallery_names[g]
        for r, i in enumerate(rows):
            out[ranking.queries[i].id] = [int(names[j]) for j in ranking.indices[g][r].tolist()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return path
