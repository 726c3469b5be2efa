"""MSDNet and FusionNet: functional multi-exit Keras models.

Both are built in ``__init__`` (keras-hub style) and keep every constructor
argument in ``get_config()``, so ``.keras`` files load with ``safe_mode=True``.
Outputs are the logits of every exit, cheapest first.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import keras

from tf_fusionnet.models.blocks import build_multi_exit_outputs, validate_image_shape

# keras.Model keyword arguments a saved config may carry; anything else is a typo
# (``fusoin=False``) that Keras would silently ignore, so it is refused.
_MODEL_KWARGS = {"trainable", "dtype"}


def _check_kwargs(cls_name: str, kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - _MODEL_KWARGS)
    if unknown:
        raise TypeError(f"{cls_name} got unexpected argument(s) {', '.join(unknown)}")


def _plain(value: Any) -> Any:
    """Lists, not tuples, so ``get_config()`` is JSON-stable."""
    return list(value) if isinstance(value, (tuple, list)) else value


def architecture_arguments(init, arguments: dict[str, Any]) -> dict[str, Any]:
    """The architecture arguments of the constructor ``init``, given its ``locals()``: the ones its
    signature names (but ``name`` and ``**kwargs``), so each is stated once, there, with its
    default and type, and ``get_config`` and the builder read them from it."""
    parameters = inspect.signature(init).parameters
    return {key: _plain(arguments[key]) for key in parameters if key not in ("self", "name", "kwargs")}


class MultiExitModel(keras.Model):
    """What every multi-exit model here shares: its exits, its architecture config, and how a
    saved config is read back (with ``_LEGACY_DEFAULTS`` for arguments added later)."""

    _LEGACY_DEFAULTS: dict[str, Any] = {}
    _arch_config: dict[str, Any]

    def stage_targets(self, exit_index: int) -> list:
        """Tensors stage ``exit_index`` computes besides its exit (see ``models/stage_cut.py``)."""
        return []

    @property
    def num_exits(self) -> int:
        return len(self.outputs)

    # A loss on the exits' joint prediction (exit distillation), set by the trainer for ``fit``;
    # a per-output compiled loss sees one exit only. Not part of the config: it is how this
    # instance trains, not what it is.
    training_loss_term: Any = None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if training and self.training_loss_term is not None:
            loss = loss + self.training_loss_term(y_pred)
        return loss

    @property
    def arch_config(self) -> dict[str, Any]:
        """The architecture arguments this model was built with."""
        return dict(self._arch_config)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable, **self.arch_config}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**{**cls._LEGACY_DEFAULTS, **config})

    @classmethod
    def from_preset(cls, preset: str, **kwargs):
        """A model from a preset, keras-hub style.

        ``preset``: a name of ``tf_fusionnet.presets.PRESETS`` builds that architecture with fresh
        weights (``kwargs``: constructor arguments, e.g. ``num_classes=100``); a folder written by
        :meth:`save_to_preset` loads its weights, and a trained model comes back as a
        :class:`~tf_fusionnet.models.pixels.PixelClassifier` that reads 0-255 pixels.

        Example:
        ```python
        model = FusionNet.from_preset("fusionnet-cifar", num_classes=10)
        trained = FusionNet.from_preset("presets/my-fusionnet")
        ```
        """
        from tf_fusionnet.models.preset_files import PresetError, load_preset

        model = load_preset(preset, **kwargs)
        network = getattr(model, "network", model)
        if not isinstance(network, cls):
            raise PresetError(f"{preset}: holds a {type(network).__name__}, not a {cls.__name__} "
                              "(use tf_fusionnet.load_model, or that class's from_preset)")
        return model

    def save_to_preset(self, preset_dir: str) -> None:
        """Writes ``config.json``, ``metadata.json`` and ``model.weights.h5`` to ``preset_dir``
        (this bare network reads normalised images; a trained model's preset is written from its
        :class:`~tf_fusionnet.models.pixels.PixelClassifier`)."""
        from tf_fusionnet.models.preset_files import save_preset

        save_preset(self, preset_dir)


class _MultiExitNetwork(MultiExitModel):
    """Shared constructor plumbing; use :class:`MSDNet` or :class:`FusionNet`."""

    # Values of arguments added after models were first saved: a config without
    # them was written by a version that behaved like this.
    _LEGACY_DEFAULTS: dict[str, Any] = {"initializer": "keras", "gradient_equilibrium": False}

    def _build(self, config: dict[str, Any], fixed: dict[str, Any], name: str, **kwargs):
        """Builds the graph from the constructor's ``config`` and the arguments this class fixes
        (``fixed``: MSDNet is FusionNet's builder with the fusion parts off)."""
        _check_kwargs(type(self).__name__, kwargs)
        image_shape = validate_image_shape(config["image_shape"])
        inputs = keras.Input(shape=image_shape, name="image")
        builder_arguments = {key: tuple(value) if isinstance(value, list) else value
                             for key, value in {**config, **fixed}.items() if key != "image_shape"}
        outputs, block_states = build_multi_exit_outputs(inputs, **builder_arguments)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self._arch_config = {**config, "image_shape": list(image_shape)}
        # Names of the layers whose outputs are each block's multi-scale state;
        # derived from the graph, so not part of the config. A scale that no
        # exit depends on (possible in tiny configs) is not part of the model.
        in_graph = {layer.name for layer in self.layers}
        self._block_state_names = tuple(
            tuple(
                t._keras_history.operation.name
                for t in state
                if t._keras_history.operation.name in in_graph
            )
            for state in block_states
        )

    def block_state_tensors(self, block: int) -> list:
        """Symbolic feature maps after ``block`` (0-based), finest scale first."""
        return [self.get_layer(name).output for name in self._block_state_names[block]]

    def stage_targets(self, exit_index: int) -> list:
        """Tensors stage ``exit_index`` (0-based) computes besides its exit: the whole block state.

        As in the official counter, block k is computed at every scale before exit k answers,
        including finer scales only later blocks read.
        """
        if exit_index >= len(self.outputs) - 1:
            return []
        return self.block_state_tensors(exit_index)


# MSDNet is the multi-scale dense builder with FusionNet's three changes off.
MSDNET_FIXED: dict[str, Any] = {
    "fusion": False,
    "efficient_stem": False,
    "stem_channels": 0,
    "stem_stride": 1,
    "head_type": "msdnet",
    "transition": "msdnet",
}


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class MSDNet(_MultiExitNetwork):
    """Multi-Scale Dense Network (Huang et al., ICLR 2018), CIFAR variant.

    Faithful to the official MSDNet-PyTorch model with ``prune="max"``,
    bottleneck layers and reduction 0.5, in conv-BN-ReLU order.

    Args:
        num_classes: classes of every exit.
        image_shape: (height, width, channels) of the input, at least 16x16.
        num_blocks: blocks, one exit after each.
        step_mode: "even" (every later block has ``step`` layers) or
            "lin_grow" (block i has ``step * i + 1``).
        step: layers per later block (see ``step_mode``).
        base: layers in the first block.
        n_channels: base channel count of the stem (scale s has
            ``n_channels * gr_factor[s]``).
        growth_rate: base channels every layer adds (times ``gr_factor[s]``).
        gr_factor: per-scale channel multipliers; its length is the number
            of scales.
        bn_factor: per-scale bottleneck width multipliers.
        reduction: transition compression (0 disables transitions).
        bottleneck: use the 1x1 bottleneck before every 3x3 conv.
        head_channels: channels of the exit classifiers' convs.
        initializer: "pytorch" (PyTorch's default init, which is what the
            official code runs), "msdnet" (the normal fan-out init its
            ``_init_weights`` declares but never applies) or "keras"
            (``he_normal``/Glorot). See docs/architecture.md.
        gradient_equilibrium: IMTA's gradient equilibrium (training only; the
            forward pass and the weights are the same): on the coarsest scale
            after block i of K, the gradient from exit i times 1/(K - i + 1),
            from the later blocks times (K - i)/(K - i + 1). docs/training.md.

    Example:
    ```python
    model = MSDNet(num_classes=10, num_blocks=7, step=2, base=4)
    logits_per_exit = model(np.zeros((1, 32, 32, 3)))
    ```
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_shape: Sequence[int] = (32, 32, 3),
        num_blocks: int = 7,
        step_mode: str = "even",
        step: int = 2,
        base: int = 4,
        n_channels: int = 16,
        growth_rate: int = 6,
        gr_factor: Sequence[int] = (1, 2, 4),
        bn_factor: Sequence[int] = (1, 2, 4),
        reduction: float = 0.5,
        bottleneck: bool = True,
        head_channels: int = 128,
        initializer: str = "pytorch",
        gradient_equilibrium: bool = False,
        name: str | None = None,
        **kwargs,
    ):
        self._build(architecture_arguments(MSDNet.__init__, locals()), MSDNET_FIXED, name=name or "msdnet", **kwargs)


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class FusionNet(_MultiExitNetwork):
    """The multi-exit network of Addad, Lechervy and Jurie.

    MSDNet's multi-scale dense skeleton with the fusion layer (the strided path
    into scale s reads scale s-1 *including* the current layer), the paper's
    transition (a layer that drops a scale no longer reads it; channels are
    halved within each scale), an efficient stem and a lighter exit head.
    See ``docs/architecture.md`` for every choice the paper leaves open.

    Args:
        num_classes, image_shape, num_blocks, step_mode, step, base,
        n_channels, growth_rate, gr_factor, bn_factor, reduction, bottleneck,
        head_channels: as in :class:`MSDNet`.
        fusion: the fusion layer (False: MSDNet's cross-scale connections).
        efficient_stem: the efficient stem (False: MSDNet's stem).
        stem_channels: width of the efficient stem's inner convs.
        stem_stride: stride of the efficient stem's last conv; 2 (the paper)
            makes the finest scale half the input resolution.
        head_type: "fusion" (3x3/s2 + 1x1 convs) or "msdnet" (two 3x3/s2).
        transition: "fusionnet" (the paper's: at a scale-drop layer the new
            finest scale does not read the dropped one) or "msdnet" (it reads
            it through a strided conv, as in MSDNet).
        initializer, gradient_equilibrium: as in :class:`MSDNet`.

    Example:
    ```python
    model = FusionNet(num_classes=10)
    model_without_fusion = FusionNet(num_classes=10, fusion=False)
    ```
    """

    _LEGACY_DEFAULTS = {"initializer": "keras", "transition": "msdnet", "gradient_equilibrium": False}

    def __init__(
        self,
        num_classes: int = 10,
        image_shape: Sequence[int] = (32, 32, 3),
        num_blocks: int = 7,
        step_mode: str = "even",
        step: int = 2,
        base: int = 4,
        n_channels: int = 32,
        growth_rate: int = 12,
        gr_factor: Sequence[int] = (1, 2, 4),
        bn_factor: Sequence[int] = (1, 2, 4),
        reduction: float = 0.5,
        bottleneck: bool = True,
        head_channels: int = 128,
        fusion: bool = True,
        efficient_stem: bool = True,
        stem_channels: int = 32,
        stem_stride: int = 2,
        head_type: str = "fusion",
        transition: str = "fusionnet",
        initializer: str = "pytorch",
        gradient_equilibrium: bool = False,
        name: str | None = None,
        **kwargs,
    ):
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}.")
        self._build(architecture_arguments(FusionNet.__init__, locals()), {}, name=name or "fusionnet", **kwargs)
