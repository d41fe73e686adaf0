"""Dataset files (`files.py`), MultiMNIST generation (`multimnist.py`), and subsets, splits and
on-device batches (`batches.py`)."""
