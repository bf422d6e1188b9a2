import os

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the passes the fuzz cases run
