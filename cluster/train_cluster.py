"""4.1 users type `python cluster/train_cluster.py`: this runs the top-level train_cluster.py with the same flags."""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    script = Path(__file__).resolve().parent.parent / "train_cluster.py"
    sys.path[0] = str(script.parent)  # the repo root, not cluster/
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")
