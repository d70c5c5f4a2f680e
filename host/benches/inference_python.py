"""ONNX Runtime from Python on the same batches as the per-call table of
`cargo bench --bench inference` (rows 1, 8 and 32 of 16 tokens; 15 rounds
of 20 calls after one warm-up round; the median ms per call): the
baseline beside the Rust figures in docs/performance.md.

Run: `python3 host/benches/inference_python.py MODEL.onnx cuda|cpu`, with
the `onnxruntime-gpu` (or `onnxruntime`) 1.31 package and numpy importable.
"""

import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

model, device = sys.argv[1], sys.argv[2]
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
providers = [("CUDAExecutionProvider", {"device_id": 0})] if device == "cuda" else ["CPUExecutionProvider"]
session = ort.InferenceSession(model, options, providers=providers)
print(f"onnxruntime {ort.__version__} from Python {sys.version.split()[0]}, providers {session.get_providers()}")
seq = 16
for rows in (1, 8, 32):
    n = rows * seq
    ids = np.array(
        [101 if i % seq == 0 else 102 if i % seq == seq - 1 else 2000 + ((i % seq) * 37 + i) % 20000 for i in range(n)],
        dtype=np.int64,
    ).reshape(rows, seq)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    times = []
    for r in range(16):
        t = time.perf_counter()
        for _ in range(20):
            session.run(["last_hidden_state"], feeds)
        if r:
            times.append((time.perf_counter() - t) * 1e3 / 20)
    print(f"rows {rows:>3}: {statistics.median(times):.3f} ms per call")
