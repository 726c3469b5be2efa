"""SGD with PyTorch's semantics: L2 weight decay coupled to the gradient, momentum outside the lr.

Written by hand because no Keras optimizer does this. ``keras.optimizers.SGD(weight_decay=wd)``
applies *decoupled* decay (``w -= lr * wd * w`` each step, outside the momentum), which at
momentum 0.9 is ten times weaker than the ``torch.optim.SGD(weight_decay=wd)`` of the MSDNet
recipe the paper follows; and Keras keeps its velocity in units of ``lr * gradient``, so under a
changing learning rate its trajectory differs from PyTorch's even without decay.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class TorchSGD(keras.optimizers.Optimizer):
    """``torch.optim.SGD(lr, momentum, weight_decay, nesterov)`` with ``dampening=0``.

    Per variable ``w`` with gradient ``g`` and learning rate ``lr_t`` at step t::

        d = g + weight_decay * w          (coupled L2, before the momentum)
        buf = momentum * buf + d          (buf starts at 0, so buf_1 = d, as in PyTorch)
        w = w - lr_t * (d + momentum * buf if nesterov else buf)

    At a steady state the decay shrinks ``w`` by ``lr * wd / (1 - momentum)`` per step.

    Args:
        learning_rate: a float or a ``keras.optimizers.schedules`` schedule.
        momentum: momentum factor (0 disables the buffer).
        weight_decay: coupled L2 coefficient (0 disables it).
        nesterov: Nesterov momentum, PyTorch's form.
        exclude_from_decay: substrings of variable paths that get no decay (e.g.
            ``["gamma", "beta", "bias"]``); empty decays every variable, as
            ``torch.optim.SGD(model.parameters(), ...)`` does.
        **kwargs: the base optimizer's arguments (``clipnorm``, ``name``, ...).
            Its own ``weight_decay`` (decoupled) is not accepted.

    Example:
    ```python
    optimizer = TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
    model.compile(optimizer=optimizer, loss=...)
    ```
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        exclude_from_decay: Sequence[str] = (),
        name: str = "torch_sgd",
        **kwargs,
    ):
        if "weight_decay" in kwargs:
            raise ValueError("TorchSGD's weight_decay is coupled; the base class's decoupled one is not used")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov needs momentum > 0")
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.exclude_from_decay = list(exclude_from_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        self._decayed = [
            bool(self.coupled_weight_decay) and not any(s in v.path for s in self.exclude_from_decay)
            for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self._decayed[index]:
            gradient = ops.add(gradient, ops.multiply(variable, self.coupled_weight_decay))
        if not self.momentums:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buf = self.momentums[index]
        self.assign(buf, ops.add(ops.multiply(buf, self.momentum), gradient))
        step = ops.add(gradient, ops.multiply(buf, self.momentum)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(step, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)  # the base class's (decoupled) one, always None here
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.coupled_weight_decay,
                "nesterov": self.nesterov,
                "exclude_from_decay": list(self.exclude_from_decay),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.optimizers.schedules.deserialize(config["learning_rate"])
        return cls(**config)


__all__ = ["TorchSGD"]
