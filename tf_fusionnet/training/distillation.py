"""Exit distillation: every exit but the last also learns from a later exit's softened prediction.

The form is IMTA's one-for-all distillation (Li et al., ICCV 2019; also Phuong & Lampert, ICCV
2019), with a batch-mean KL divergence. For exit k < K with logits ``z_k``, teacher probabilities
``q_k`` (gradient stopped) and temperature T::

    L_k = (1 - alpha) * w_k * CE(y, z_k) + alpha * w_k * T^2 * KL(q_k || softmax(z_k / T))
    L_K = w_K * CE(y, z_K)

``w_k`` are the per-exit loss weights (``--exit_weights``), CE is the recipe's label-smoothed
cross-entropy. ``alpha = 0`` is the plain recipe. The T^2 keeps the soft term's gradient on the
scale of the hard one's as T changes (Hinton et al., 2015).

Teachers (``--distill_teacher``):

* ``last``: ``q_k = softmax(z_K / T)`` for every k (IMTA, Phuong & Lampert);
* ``later_mean``: ``q_k`` is the mean of ``softmax(z_j / T)`` over the exits j > k, an ensemble
  of what the network knows later (for exit K-1 it is the last exit alone).

IMTA's code uses ``nn.KLDivLoss()`` with its default ``reduction="mean"``, which averages over
images *and classes*: its soft term is this module's divided by the number of classes. This module
takes the batch mean of the per-image KL (the divergence itself); docs/training.md compares them.

Written here rather than taken from a library: Keras has ``KLDivergence`` but no loss that reads
one output's prediction as another output's target; both training loops (``fit`` through
:meth:`MultiExitModel.compute_loss` and the multi-worker step) call :func:`distillation_terms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

TEACHERS = ("last", "later_mean")


@dataclass(frozen=True)
class ExitDistillation:
    """The distillation settings of a run.

    Args:
        alpha: weight of the soft term, in [0, 1]; the hard term of exits 1..K-1 gets 1 - alpha.
        temperature: softening temperature T > 0 of teacher and student.
        teacher: ``"last"`` or ``"later_mean"`` (see the module docstring).
    """

    alpha: float
    temperature: float = 3.0
    teacher: str = "last"

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha!r}")
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature!r}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"distillation teacher must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0

    def hard_weights(self, exit_weights: Sequence[float]) -> list[float]:
        """Cross-entropy weight per exit: ``(1 - alpha) * w_k`` for all but the last."""
        last = len(exit_weights) - 1
        return [float(w) * (1.0 if k == last else 1.0 - self.alpha) for k, w in enumerate(exit_weights)]

    def soft_weights(self, exit_weights: Sequence[float]) -> list[float]:
        """Weight of each exit's soft term, ``alpha * w_k * T^2`` (exits 1..K-1)."""
        t2 = self.temperature ** 2
        return [self.alpha * float(w) * t2 for w in exit_weights[:-1]]


def distillation_terms(logits: Sequence, distill: ExitDistillation) -> list:
    """Per-image KL(teacher || student) at temperature T of exits 1..K-1 (K-1 tensors of shape [batch]).

    ``logits``: every exit's logits, cheapest first (any float dtype; computed in float32).
    The teacher's gradient is stopped: the later exits learn from the labels only.
    """
    from keras import ops

    t = float(distill.temperature)
    scaled = [ops.cast(z, "float32") / t for z in logits]
    log_student = [ops.log_softmax(z, axis=-1) for z in scaled[:-1]]
    teacher_probs = [ops.stop_gradient(ops.softmax(z, axis=-1)) for z in scaled]
    terms = []
    for k, log_p in enumerate(log_student):
        if distill.teacher == "last":
            q = teacher_probs[-1]
        else:
            later = teacher_probs[k + 1:]
            q = later[0] if len(later) == 1 else ops.mean(ops.stack(later, axis=0), axis=0)
        # KL(q || p) = sum q (log q - log p); q log q is 0 where q is 0.
        log_q = ops.log(ops.maximum(q, 1e-12))
        terms.append(ops.sum(q * (log_q - log_p), axis=-1))
    return terms


def distillation_loss(logits: Sequence, distill: ExitDistillation, exit_weights: Sequence[float]):
    """The soft part of the loss, averaged over the batch: ``sum_k alpha * w_k * T^2 * mean(KL_k)``."""
    from keras import ops

    total = None
    for weight, term in zip(distill.soft_weights(exit_weights), distillation_terms(logits, distill)):
        part = weight * ops.mean(term)
        total = part if total is None else total + part
    return total if total is not None else ops.zeros(())


__all__ = ["ExitDistillation", "TEACHERS", "distillation_loss", "distillation_terms"]
