"""HEAR-stack compatibility layer: heareval 2021.1.3 and hear-validator 2021.0.6 on torch 2.11,
pytorch-lightning 1.9.5, numpy 2 and Python 3.11, without touching site-packages.

Each tool runs in its own subprocess, `python -m hearscan.compat.launch TOOL ... -- ARGS`, which applies
these fixes in that process only (see `hearscan.compat.fixes`), then hands over to the tool:

- tf:           heareval's embeddings runner and hear-validator `import tensorflow` at the top but use it
                only for TensorFlow models.  Without a real TensorFlow, a stand-in package
                (`hearscan/compat/tf_standin/`) is appended to sys.path in that process; it reports a GPU
                exactly when torch does (heareval raises when the two disagree).
- weights_only: torch >= 2.6 refuses the classes/functions of heareval's hyper-parameter grid when
                heareval and Lightning reload the checkpoints they have just written; exactly those
                globals are allowlisted (torch.serialization.add_safe_globals).  weights_only stays on.
- epoch:        heareval sets `trainer.fit_loop.current_epoch`, which Lightning >= 1.6 no longer reads,
                so every event task crashed with KeyError in its test step; the counter Lightning reads
                (`fit_loop.epoch_progress.current.completed`) is set to the best epoch first.
- pynvml:       on CUDA machines `gpu_max_mem.device_name` calls `.decode()` on the str recent pynvml
                returns; only bytes are decoded (and without pynvml, torch.cuda measures instead).
- numpy:        pytorch-lightning 1.9.5 uses `np.Inf` (gone in numpy 2); aliased to np.inf should nothing
                else (today: torchmetrics) have put it back.
- logs:         Lightning logs and checkpoints go under a log folder of ours (temporary by default), not
                ./logs or the embeddings folder; checkpoints are deleted once each task is scored.
Plus options upstream lacks: a seed for the predictions runner (replacing its fixed 42) and grids
default|fast|faster|fork (fork = the seed papers' 2-point grid), with numeric grid overrides.

Python API (stable):  run_validator, run_embeddings, run_predictions, headline_score, HearToolError.
"""

from hearscan.compat.runners import (  # noqa: F401
    GRIDS,
    EmbeddingsRun,
    HearToolError,
    PredictionResult,
    ToolRun,
    headline_score,
    run_embeddings,
    run_predictions,
    run_validator,
)
