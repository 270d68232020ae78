"""The on-disk contracts between hearscan's stages, one module per kind of folder, each the only owner of
its file names, reader, writer and checks:

    taskdir       a HEAR task directory (heareval's input): metadata, label vocabulary, splits, audio
    embeddings    an embeddings directory (heareval's embeddings runner's output, `hearscan extract`'s):
                  per-split memmaps, labels, timestamps, the done marker and manifest, per-seed views
    predictions   a predictions directory (`hearscan probe`'s output): per-seed score files and the headline

The stages import these, never each other: task dir -> feature_extract -> embeddings dir -> downstream ->
predictions dir -> results.
"""
