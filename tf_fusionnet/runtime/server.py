"""Server mode: early exit over a stream of batches, every stage call at one size."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import numpy as np

from .confidence import softmax
from .manifest import BundleError


class ServerMode:
    """Server mode: every stage call a full batch of one shape, images queued between stages.
    A part of :class:`~.runner.CascadeRunner`."""

    def classify_stream(self, batches: Iterable[np.ndarray], batch_size: int = 32) -> Iterator[tuple[int, dict]]:
        """Server mode: early exit over a stream of uint8 image batches, every stage call at one size.

        An image that no exit has answered waits in its next stage's queue until ``batch_size``
        images are there, so each stage always runs on a full batch of one shape. LiteRT plans a
        graph again whenever an input's shape changes, and that cost 2.7-7.9 ms per stage call here
        (batch 32, 2 threads), more than the stage itself; shrinking the batch after each exit,
        as a one-call cascade would, spends more than the exits save. When the stream ends,
        each queue is run once more, padded to ``batch_size`` (or to the number of images seen,
        if fewer).

        Yields ``(index, result)`` as images are answered, so not in input order; ``index``
        counts images from 0 over the whole stream. A result's ``ms`` is its latency: from the
        moment its batch arrived to its answer, time spent waiting in queues included.
        """
        if batch_size < 1:
            raise BundleError(f"batch_size must be >= 1, got {batch_size}")
        return self._stream((self.stage_input(b) for b in batches), batch_size)

    def _stream(self, batches: Iterable[np.ndarray], batch_size: int) -> Iterator[tuple[int, dict]]:
        # A queue entry is (index, start, upper, pool, rows): images index[i] (which arrived at
        # start[i]; upper[i]: the latency-budget mixture's upper entry) whose maps are rows[i] of
        # pool's arrays. Rows are gathered once, when a stage takes them.
        queues: list[list[tuple]] = [[] for _ in range(self.num_exits)]
        waiting = [0] * self.num_exits

        def take(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
            """Up to batch_size images from the front of queue k, as one (index, start, upper, pool)."""
            parts, n = [], 0
            while queues[k] and n < batch_size:
                index, start, upper, pool, rows = queues[k].pop(0)
                if n + len(index) > batch_size:
                    cut = batch_size - n
                    queues[k].insert(0, (index[cut:], start[cut:], upper[cut:], pool, rows[cut:]))
                    index, start, upper, rows = index[:cut], start[:cut], upper[:cut], rows[:cut]
                parts.append((index, start, upper, pool, rows))
                n += len(index)
            waiting[k] -= n
            index, start, upper, pool, rows = parts[0]
            if len(parts) == 1 and len(rows) == len(next(iter(pool.values()))):
                return index, start, upper, pool  # a whole batch that went on untouched: no copy
            return (*(np.concatenate([p[i] for p in parts]) for i in range(3)),
                    {m: np.concatenate([p[3][m][p[4]] for p in parts]) for m in pool})

        def run(k: int) -> Iterator[tuple[int, dict]]:
            index, start, upper, pool = take(k)
            n = len(index)
            # The end of the stream: pad, so the stage keeps its shape; never beyond the images
            # seen (a stream shorter than batch_size never ran a full batch, and padding 10
            # images to --batch_size 1000000 allocated gigabytes of zeros).
            size = min(batch_size, seen)
            if n < size:
                pool = {m: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
                        for m, v in pool.items()}
            probs = softmax(self._run_stage(k, pool)[:n])
            confidence = probs.max(axis=1)
            threshold = self.thresholds[k] if self._mix is None else np.where(upper, self._mix[0][k], self.thresholds[k])
            done = confidence >= threshold
            now = time.perf_counter()
            for j in np.flatnonzero(done):
                yield int(index[j]), {"class": int(probs[j].argmax()), "confidence": float(confidence[j]),
                                      "exit": k + 1, "macs": self.exit_macs[k], "ms": (now - start[j]) * 1e3}
            keep = np.flatnonzero(~done)
            if not len(keep):
                return
            if 2 * len(keep) < len(index):  # few go on: copy their rows now, not hold the batch's maps
                pool, rows = {m: v[keep] for m, v in pool.items()}, np.arange(len(keep))
            else:
                rows = keep
            queues[k + 1].append((index[keep], start[keep], upper[keep], pool, rows))
            waiting[k + 1] += len(keep)

        def drain(final: bool) -> Iterator[tuple[int, dict]]:
            for k in range(self.num_exits):
                while waiting[k] >= batch_size or (final and waiting[k]):
                    yield from run(k)

        seen = 0
        for x in batches:
            now = time.perf_counter()
            upper = self._upper_entry(len(x))
            queues[0].append((np.arange(seen, seen + len(x)), np.full(len(x), now),
                              np.zeros(len(x), bool) if upper is None else upper, {"image": x}, np.arange(len(x))))
            waiting[0] += len(x)
            seen += len(x)
            yield from drain(final=False)
        yield from drain(final=True)
