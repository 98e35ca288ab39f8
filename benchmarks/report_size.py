"""Usage: python benchmarks/report_size.py [GSM8K_TRAIN.jsonl]

Measure the HTML report size for 5,000 real GSM8K rows (random unit embeddings stand in for
the embedder: the file size depends on the rows' text and count, not the embedding values)."""
import sys
import time
import numpy as np
from delift_core.data.dataset import load_dataset
from delift_core.selection.select import select
from delift_core.outputs.audit import audit
from delift_core.kernels.builder import Kernels
from delift_core.outputs.report import build_report
from delift_core.outputs.maps import cluster_labels
ds = load_dataset(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/gsm8k_train.jsonl")
ds = ds.subset(range(5000))
rng = np.random.default_rng(0)
e = rng.normal(size=(5000, 384)).astype(np.float32)
e /= np.linalg.norm(e, axis=1, keepdims=True)
k = Kernels("embedding", pool=((e @ e.T + 1) / 2).astype(np.float32))
t = time.time()
sel = select(ds, "fl", k, 0.3)
cl = cluster_labels(e, 8)
a = audit(ds, k, selection=sel, embeddings=e, clusters=cl)
html = build_report(sel, manifest={"inputs": {"pool": {"source": ds.source, "rows": len(ds)}}},
                    embeddings=e, clusters=cl, audit=a, map_method="pca")
b = len(html.encode("utf-8"))
from plotly.offline import get_plotlyjs
print(f"rows {len(ds)} report bytes {b} ({b/1e6:.2f} MB), plotly.js {len(get_plotlyjs().encode())} bytes, "
      f"{time.time()-t:.0f} s")
