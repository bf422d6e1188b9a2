"""Partition an FFN's intermediate neurons into equal-sized experts.

- `weights`: balanced k-means on the first layer's neuron vectors (its columns in [D, F]
  form, unit-normalised), as MoEfication's parameter clustering: neurons with similar input
  weights fire on similar inputs.
- `coactivation`: balanced k-means on each neuron's activation pattern over calibration
  tokens (unit-normalised columns of the positive part of the activations): the squared
  distance of two unit patterns is 2 - 2 cos, so the clusters maximise the co-activation
  inside each expert, the quantity MoEfication's graph partitioning maximises.

Balance is exact (every expert gets F / E neurons): the assignment step is a greedy over
neurons ordered by how much they lose if they miss their nearest centre.
"""

from __future__ import annotations

import numpy as np


def _unit_rows(points: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return points / np.maximum(norms, 1e-12)


def _balanced_assign(dist: np.ndarray, capacity: int) -> np.ndarray:
    n, k = dist.shape
    order = np.argsort(dist, axis=1)
    best = dist[np.arange(n), order[:, 0]]
    second = dist[np.arange(n), order[:, 1]] if k > 1 else best
    room = np.full(k, capacity)
    labels = np.empty(n, dtype=np.int64)
    for i in np.argsort(best - second, kind="stable"):  # most decided neurons first
        for c in order[i]:
            if room[c]:
                labels[i] = c
                room[c] -= 1
                break
    return labels


def balanced_kmeans(points: np.ndarray, k: int, *, iters: int = 25, seed: int = 0) -> np.ndarray:
    """Labels in [0, k) for the rows of `points`, exactly len(points) / k rows per label."""
    n = len(points)
    if n % k:
        raise ValueError(f"{n} points do not split into {k} equal clusters")
    pts = _unit_rows(np.asarray(points, dtype=np.float64))
    rng = np.random.default_rng(seed)
    centers = pts[rng.choice(n, k, replace=False)]
    labels = np.full(n, -1)
    sq = np.sum(pts * pts, axis=1, keepdims=True)
    for _ in range(iters):
        dist = sq - 2.0 * pts @ centers.T + np.sum(centers * centers, axis=1)
        new = _balanced_assign(dist, n // k)
        if np.array_equal(new, labels):
            break
        labels = new
        centers = np.stack([pts[labels == c].mean(axis=0) for c in range(k)])
    return labels


def partition_by_weights(first_weight: np.ndarray, experts: int, *, seed: int = 0) -> np.ndarray:
    """Expert label per neuron from the first layer's weight [D, F]."""
    return balanced_kmeans(first_weight.T, experts, seed=seed)


def partition_by_coactivation(activations: np.ndarray, experts: int, *, seed: int = 0) -> np.ndarray:
    """Expert label per neuron from calibration activations [T, F] (after the activation)."""
    patterns = np.maximum(activations, 0.0).T  # [F, T]
    dead = np.linalg.norm(patterns, axis=1) == 0
    if dead.any():  # never-active neurons: cluster them by their (negative) responses instead
        patterns[dead] = np.abs(activations.T[dead])
    return balanced_kmeans(patterns, experts, seed=seed)


def expert_permutation(labels: np.ndarray, experts: int) -> np.ndarray:
    """Neuron order that puts each expert's neurons together (expert-major)."""
    return np.concatenate([np.flatnonzero(labels == e) for e in range(experts)])
