"""One training run and its directory: the file contract (`rundir.py`), checkpoints, the
training loop (`train.py`) and the evaluator it uses (`evaluate.py`)."""
