"""Work built on trained runs: sweeps (`sweep/`), evaluation at other r (`eval_r.py`),
ensembles, pictures and benchmarks."""
