"""Feature extraction: HEAR task directories -> embeddings in heareval's on-disk format.

`taskdir` reads and checks task directories and audio, `modules` resolves module specs and names the
outputs, `engine` runs the modules over the tasks (batched, resumable), `seeds` prepares per-seed views
for the downstream step without copying embeddings, `cli` is `hearscan extract`.
"""
