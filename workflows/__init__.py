"""Workflows that chain pipeline stages (layer 5): `specialise` (Diff-SVC's B->A specialised models)."""
