"""Downstream: embeddings (heareval format) -> per-seed scores (linear probe or heareval protocols) -> tables.

embeddings: read/write heareval's on-disk format with checks;  linear: the batched linear probe;
metrics: batched selection metrics + heareval's own scores;  probe: protocols, folds, outputs;
results: aggregation over seeds, tables, plots;  synthetic: learnable test embeddings;  bench: speed.
"""
