"""Speaker-similarity helpers for inference: k-means codebooks and faiss feature retrieval.

Library API (the files are 4.1's `kmeans_10000.pt` and `feature_and_index.pkl`):
- `load_kmeans(path) -> {speaker name: centres [K, D]}`; `kmeans_predict(features [T, D], centres)`;
  `kmeans_mix(features [T, D], centres, ratio)`.
- `load_feature_index(path) -> {speaker id: SpeakerIndex(index, vectors)}`;
  `retrieve(features [T, D], index, vectors, k=8)`; `retrieval_mix(features, speaker_index, ratio, k=8)`.
- Training: `train_cluster_model(...)` (train_cluster.py), `build_index_file(...)` (train_index.py).
Both loaders refuse files holding anything but the format's data (UnsafeFileError).
"""
from cluster.codebook import (DEFAULT_CLUSTERS, fit_codebook, kmeans_mix, kmeans_predict, load_kmeans,
                              save_kmeans, train_cluster_model)
from cluster.feature_index import (SpeakerIndex, build_index_file, ivf_lists, load_feature_index, retrieval_mix,
                                   retrieve, save_feature_index, train_feature_index)

__all__ = [
    "DEFAULT_CLUSTERS", "fit_codebook", "kmeans_mix", "kmeans_predict", "load_kmeans", "save_kmeans",
    "train_cluster_model", "SpeakerIndex", "build_index_file", "ivf_lists", "load_feature_index",
    "retrieval_mix", "retrieve", "save_feature_index", "train_feature_index",
]
