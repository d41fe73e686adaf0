"""`capsroute report`: loading runs (`runset.py`), numbers (`aggregate.py`, `stats.py`), the
paper's tables (`paper.py`), findings, figures, and the files (`build.py`)."""
