"""benchmarks/gpu_check.py --dry: the GPU check's code runs on the CPU at tiny sizes and fills every field."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
METHODS = ("clip4idc_adapt", "clip4idc_caption", "pic2word", "combiner_stage1", "combiner_stage2")
VARIANT_FIELDS = ("step_ms", "samples_per_s", "peak_mem_mib", "loss", "dtype", "tflops", "mfu")


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_prints_and_writes_every_field(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--out", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout)
    written = json.loads(out.read_text())
    assert printed.pop("written_to") == str(out) and printed == written

    assert written["dry"] is True and written["seconds"] > 0
    device = written["device"]
    for key in ("kind", "name", "capability", "amp_dtype", "peak_tflops", "tf32_matmul", "torch", "cpu_threads"):
        assert key in device, key
    assert device["kind"] == "cpu" and device["peak_tflops"] == dict(bf16=None, fp16=None, fp32=None)
    assert set(written["methods"]) == set(METHODS)
    for name, m in written["methods"].items():
        assert m["flops_per_step"] > 0 and m["batch"] >= 1 and m["seconds"] >= 0, name
        assert set(m["variants"]) == {"fp32", "amp", "compile"}, name
        for variant, r in m["variants"].items():
            assert set(VARIANT_FIELDS) <= set(r), (name, variant)
            assert r["step_ms"] > 0 and r["samples_per_s"] > 0 and r["tflops"] >= 0 and math.isfinite(r["loss"])
            assert r["peak_mem_mib"] is None and r["mfu"] is None  # no CUDA memory or peak on the CPU
        losses = [m["variants"][v]["loss"] for v in ("fp32", "amp")]
        assert abs(losses[0] - losses[1]) <= 0.05 * abs(losses[0]) + 1e-3, (name, losses)  # equal results
    goals = written["goals"]
    assert goals["clip4idc_amp_speedup"] > 0 and goals["amp_speedup_goal"] == 1.5
    assert isinstance(goals["amp_speedup_met"], bool) and goals["clip4idc_amp_loss_rel_diff"] >= 0
    topk = written["topk"]
    assert {"gallery", "queries", "dim", "k", "gallery_dtype", "seconds", "queries_per_s"} <= set(topk)
    assert topk["matches_full_sort"] is True
    assert written["chapters_toy_seconds"] is None and "--chapters" in written["chapters_command"]
    assert isinstance(written["mfu_limits"], str) and len(written["mfu_limits"]) > 50


def test_peak_table_knows_the_lent_gpus():
    gc = _module()
    assert gc.peak_for_name("NVIDIA H200")["bf16"] == 989.0
    assert gc.peak_for_name("NVIDIA H100 PCIe")["fp32"] == 51.0
    assert gc.peak_for_name("NVIDIA H100 80GB HBM3")["fp16"] == 989.0
    assert gc.peak_for_name("Tesla T4") == dict(bf16=None, fp16=65.0, fp32=8.1)
    assert gc.peak_for_name("NVIDIA A100-SXM4-40GB")["bf16"] == 312.0
    assert gc.peak_for_name("Some Future GPU") == dict(bf16=None, fp16=None, fp32=None)
    assert gc.peak_for_name(None) == dict(bf16=None, fp16=None, fp32=None)
