"""The index convention of every categorical column (no dependencies; imported everywhere).

* ``NULL_INDEX = 0`` — the value is null / missing.
* ``OOV_INDEX = 1`` — out of vocabulary: values seen fewer than ``min_count``
  times at build time, values cut by ``max_size``, and values never seen at
  scoring time. Rare values are what train this row, so an unseen value lands on
  a trained vector, not a random one.
* ``FIRST_INDEX = 2`` … ``K + 1`` — the vocabulary, ordered by count descending,
  then value ascending (UTF-8 byte order), which is the same whatever the
  partitioning of the source.
"""

from __future__ import annotations

__all__ = ["FIRST_INDEX", "NULL_INDEX", "OOV_INDEX"]

NULL_INDEX = 0
OOV_INDEX = 1
FIRST_INDEX = 2
