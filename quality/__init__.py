"""evaluate.py's work: convert with inference/, measure with evaluation/, compare runs side by side."""
