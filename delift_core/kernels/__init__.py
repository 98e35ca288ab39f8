"""Kernels: the utility engine, the builder, kernel files, sparse pairs, the diagonal policy, embeddings, estimates, the Ray backend."""
