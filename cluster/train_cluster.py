"""4.1 users type `python cluster/train_cluster.py`; run the top-level train_cluster.py with the same flags."""
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repo root, not cluster/
if __name__ == "__main__":
    from modules.errors import run_cli
    from train_cluster import main
    run_cli(main)
