"""Which tokens of a quincunx stage go into which chunk (one chunk = one packet's data).

A lost chunk should leave *scattered* holes, which the MIM fills well from their known
neighbours (PQ-MIM paper Sec. 4.3), not a block. So a stage's positions, in raster order,
are cut into blocks of ``k`` consecutive positions and each chunk takes exactly one
position of every block: chunk ``j`` gets the token at offset ``(j + r_b) mod k`` of
block ``b``. Consecutive stage positions are spatial neighbours, so every chunk is spread
evenly over the whole image.

The per-block rotations ``r_b`` come from a small seed. The encoder knows every token's
code length, tries :data:`LAYOUT_SEEDS` seeds and keeps the one whose largest chunk is
smallest: the FEC pads every shard to the largest chunk, so balance is bytes saved. The
decoder needs only the seed (one byte in each chunk) to rebuild the same layout.
"""

from __future__ import annotations

import numpy as np

from resilient_tx.errors import InputError

LAYOUT_SEEDS = 32  # seeds the encoder tries; seed 0 means "no rotation"


def block_rotations(num_blocks: int, k: int, seed: int) -> np.ndarray:
    """Per-block rotation in [0, k), reproducible from ``seed`` on any platform."""
    if seed == 0:
        return np.zeros(num_blocks, dtype=np.int64)
    # PCG64 with an explicit seed is specified bit-for-bit by numpy on every platform.
    return np.random.Generator(np.random.PCG64(seed)).integers(0, k, num_blocks)


def assign_chunks(n: int, k: int, seed: int) -> np.ndarray:
    """Chunk index (0..k-1) of each of a stage's ``n`` positions (in stage order)."""
    if k < 1 or n < 0:
        raise InputError(f"need k >= 1 and n >= 0, got k={k}, n={n}")
    if not 0 <= seed < 256:
        raise InputError(f"layout seed must fit one byte, got {seed}")
    idx = np.arange(n)
    rot = block_rotations(-(-n // k), k, seed)
    return (idx % k - rot[idx // k]) % k


def chunk_members(n: int, k: int, seed: int) -> list[np.ndarray]:
    """For each chunk, the indices (into the stage's position list) it carries, ascending."""
    owner = assign_chunks(n, k, seed)
    return [np.flatnonzero(owner == j) for j in range(k)]


def best_seed(bits: np.ndarray, k: int, tries: int = LAYOUT_SEEDS) -> int:
    """The seed in ``[0, tries)`` whose largest chunk (sum of ``bits``) is smallest."""
    if k == 1 or len(bits) == 0:
        return 0
    best, best_max = 0, np.inf
    for seed in range(tries):
        sizes = np.bincount(assign_chunks(len(bits), k, seed), weights=bits, minlength=k)
        if sizes.max() < best_max:
            best, best_max = seed, sizes.max()
    return best
