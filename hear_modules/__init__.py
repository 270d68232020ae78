"""HEAR modules: each file is one backbone family implementing the HEAR 2021 API.

`load_model(model_file_path="", **options)`, `get_scene_embeddings(audio, model)`,
`get_timestamp_embeddings(audio, model)`, with `model.sample_rate`, `model.scene_embedding_size`,
`model.timestamp_embedding_size`.  The families are listed in `hear_modules.registry`; shared pieces:
`_audio` (input checks), `_frontend` (Kaldi fbank, timestamps), `_checkpoint` (safe loading, strict
key/shape checks), `_options` (the option schema and the random-weights warning).

Common options of the backbone modules: `size`, `device` ("cpu", "cuda", default: CUDA when present),
`dtype` ("float32", "bfloat16"), `scan_backend` ("auto", "compiled", "reference"; the kernel itself is
chosen by csrc).
"""
