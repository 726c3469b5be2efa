"""The stages of a bundle: LiteRT interpreters, chained by their named tensors."""

from __future__ import annotations

import os

import numpy as np

from .confidence import PYTHON_TOP_MAX_CLASSES, _top_class_and_confidence, _top_probability
from .manifest import BundleError, bundle_path, check_stage
from .quantization import _converter, _tensor_quantization, dequantize, quantize, same_quantization


class StageChain:
    """The bundle's stages as LiteRT interpreters chained by their named tensors: loading and
    checking them, preparing stage 1's input, and running stages on a pool of tensors.
    A part of :class:`~.runner.CascadeRunner`, which sets ``manifest``, ``precision`` and
    ``reads_pixels`` before it calls :meth:`_load_stages`."""

    def _load_stages(self, bundle: str, files, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        # Raw interpreters rather than signature runners: a signature runner call copies every
        # output out and re-checks every input's shape, and a runner object holds a reference that
        # makes LiteRT refuse views of its buffers. Measured interleaved (1-2 threads, both models,
        # float32/int8), chaining with views cut the chain's overhead over the whole model from
        # 1.14-1.43x to 1.05-1.30x (docs/export.md).
        self.interpreters = []
        self.stage_inputs, self.stage_outputs = [], []
        # (scale, zero point) of every int8 input and output, None for float32 ones.
        self.stage_input_quantization: list[dict] = []
        self.stage_output_quantization: list[dict] = []
        io_dtype = self.precision_entry.get("stage_io_dtype", "float32")
        written: dict[str, tuple[int, ...]] = {}
        for name in files:
            path = bundle_path(bundle, name)
            try:
                interpreter = Interpreter(model_path=path, num_threads=threads)
                interpreter.allocate_tensors()
                signature = interpreter.get_signature_runner("serve")
                input_details, output_details = signature.get_input_details(), signature.get_output_details()
                del signature
                inputs = {n: d["index"] for n, d in input_details.items()}
                outputs = {n: d["index"] for n, d in output_details.items()}
                # Stage 1's image may be the uint8 pixels (normalised in the graph): no quantisation.
                pixels = {n for n, d in input_details.items() if np.dtype(d["dtype"]) == np.uint8}
                in_quant = {n: None if n in pixels else _tensor_quantization(d) for n, d in input_details.items()}
                out_quant = {n: _tensor_quantization(d) for n, d in output_details.items()}
            except Exception as error:  # LiteRT raises ValueError/RuntimeError for bad files
                raise BundleError(f"{path}: not a loadable TFLite stage ({error})") from None
            written = check_stage(self.manifest, len(self.interpreters), path, input_details, output_details, written)
            if pixels - ({"image"} if not self.interpreters else set()):
                raise BundleError(f"{path}: reads uint8 {', '.join(sorted(pixels))}; only stage 1's image may be uint8")
            if not self.interpreters and ("image" in pixels) != self.reads_pixels:
                raise BundleError(f"{path}: stage 1 reads {'uint8 pixels' if pixels else 'a normalised image'}, "
                                  "not what the manifest's input.stage_1_reads says")
            checked = [q for n, q in in_quant.items() if n not in pixels] + list(out_quant.values())
            if any((q is not None) != (io_dtype == "int8") for q in checked):
                raise BundleError(f"{path}: its inputs and outputs are not all {io_dtype}, "
                                  "as the manifest's stage_io_dtype says")
            self.interpreters.append(interpreter)
            self.stage_inputs.append(inputs)
            self.stage_outputs.append(outputs)
            self.stage_input_quantization.append(in_quant)
            self.stage_output_quantization.append(out_quant)
        self._stage_batch = [None] * len(files)  # the batch size each interpreter is allocated for
        # A stage reads named tensors returned by any earlier stage (RANet reads several stages
        # back), so the runner keeps a pool of them and drops each after its last reader.
        available = {"image"}
        for k, name in enumerate(files):
            missing = sorted(set(self.stage_inputs[k]) - available)
            if missing:
                raise BundleError(f"{os.path.join(bundle, name)} reads {', '.join(missing)}, which no earlier "
                                  "stage returns")
            available |= set(self.stage_outputs[k])
        # int8 stages hand their feature maps on as int8. A tensor whose reader expects another
        # quantisation than its writer gave it (two of stage 2's inputs in RANet's bundles; see
        # same_quantization) is converted on the way, and so is the image when a caller passes
        # floats to int8 stages.
        self._image_quantization = self.stage_input_quantization[0]["image"]
        written = {"image": self._image_quantization}
        self._conversions: list[dict] = []
        for k in range(len(files)):
            self._conversions.append({n: _converter(written[n], q) for n, q in self.stage_input_quantization[k].items()
                                      if not same_quantization(written[n], q)})
            written.update(self.stage_output_quantization[k])
        # An int8 exit's 256 possible logit values, dequantised once: entry u is int8 value
        # u.view(int8), so dequantising is one take (logits.view(uint8)) instead of three passes.
        all_int8 = np.arange(256, dtype=np.uint8).view(np.int8)
        self._logits_tables = [None if q["logits"] is None else dequantize(all_int8, *q["logits"])
                               for q in self.stage_output_quantization]
        self._logits_lists = [None if table is None else table.tolist() for table in self._logits_tables]
        self._logits_index = [outputs["logits"] for outputs in self.stage_outputs]
        # What a stage hands on: read for one image only when it goes on to the next stage.
        self._state_outputs = [{n: i for n, i in outputs.items() if n != "logits"} for outputs in self.stage_outputs]
        classes = self.interpreters[0].get_tensor(self._logits_index[0]).shape[-1]
        self._python_top = classes <= PYTHON_TOP_MAX_CLASSES
        last_reader: dict[str, int] = {}
        for k, names in enumerate(self.stage_inputs):
            for n in names:
                last_reader[n] = k
        self._dead_after = [[n for n, last in last_reader.items() if last == k] for k in range(len(files))]

    # -- inputs -----------------------------------------------------------------

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise BundleError(f"images of shape {tuple(images.shape[1:])}, the model takes "
                              f"{'x'.join(map(str, self.input_shape))} (HxWxC)")
        return images

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> normalised float32, checking the shape."""
        x = self._checked(images).astype(np.float32)  # a new array: normalised in place, one pass per operation
        np.subtract(x, self.mean, out=x)
        np.divide(x, self.std, out=x)
        return x

    def stage_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> what stage 1 reads: the pixels themselves where it normalises them
        in its graph (other dtypes rounded to 0..255), else :meth:`preprocess`'s float32, or for
        int8 stages the same quantised with stage 1's input scale and zero point."""
        images = self._checked(images)
        if self.reads_pixels:
            return images if images.dtype == np.uint8 else np.clip(np.rint(images), 0, 255).astype(np.uint8)
        if images.dtype != np.uint8:
            x = self.preprocess(images)
            return x if self._image_quantization is None else quantize(x, *self._image_quantization)
        return self._image_table.take(np.add(images, self._channel_offsets, dtype=np.uint16))

    def _invoke(self, k: int, pool: dict) -> None:
        """Sets stage k's inputs from the tensors of ``pool`` it reads and runs it."""
        interpreter = self.interpreters[k]
        inputs = self.stage_inputs[k]
        n = len(pool[next(iter(inputs))])
        if self._stage_batch[k] != n:  # LiteRT plans again for a new batch size; only then
            for name, index in inputs.items():
                interpreter.resize_tensor_input(index, pool[name].shape)
            interpreter.allocate_tensors()
            self._stage_batch[k] = n
        conversions = self._conversions[k]
        if conversions:
            for name, index in inputs.items():
                interpreter.set_tensor(index, conversions[name](pool[name]) if name in conversions else pool[name])
        else:
            for name, index in inputs.items():
                interpreter.set_tensor(index, pool[name])
        interpreter.invoke()

    def _hand_on(self, k: int, pool: dict, copy: bool) -> None:
        """Adds to ``pool`` what stage k (just run) returns besides its logits, and drops what no
        later stage reads.

        ``copy=False`` adds views of the interpreter's output buffers instead of copies. They hold
        until stage k runs again, and LiteRT refuses to run it while one is alive: only for a
        caller that drops the pool before then (one image through the stages)."""
        interpreter = self.interpreters[k]
        for name, index in self._state_outputs[k].items():
            pool[name] = interpreter.get_tensor(index) if copy else interpreter.tensor(index)()
        for name in self._dead_after[k]:
            pool.pop(name, None)

    def _run_stage(self, k: int, pool: dict) -> np.ndarray:
        """Runs stage k on the tensors of ``pool`` it reads; adds copies of what it returns, drops
        what no later stage reads, and returns its exit's logits as floats."""
        self._invoke(k, pool)
        self._hand_on(k, pool, copy=True)
        return self._float_logits(k, self.interpreters[k].get_tensor(self._logits_index[k]))

    def _answer(self, k: int, logits: np.ndarray) -> tuple[int, float]:
        """One image's top class and confidence at exit k, from the stage's own (int8 or float) logits."""
        if not self._python_top:
            z, confidence = _top_probability(self._float_logits(k, logits))
            return int(z.argmax()), float(confidence)
        table = self._logits_lists[k]
        values = logits.tolist() if table is None else [table[u] for u in logits.view(np.uint8).tolist()]
        return _top_class_and_confidence(values)

    def _float_logits(self, k: int, logits: np.ndarray) -> np.ndarray:
        table = self._logits_tables[k]
        return logits if table is None else table.take(logits.view(np.uint8))

    def run_stages(self, x: np.ndarray) -> list[np.ndarray]:
        """Logits of every exit for images ``x`` as :meth:`stage_input` returns them, running every
        stage. Where stage 1 reads the normalised image, :meth:`preprocess`'s float32 also does
        (quantised here for int8 stages)."""
        if self.reads_pixels and x.dtype != np.uint8:
            raise BundleError("stage 1 of this bundle reads uint8 pixels: pass stage_input(images), not normalised floats")
        if self._image_quantization is not None and x.dtype != np.int8:
            x = quantize(x, *self._image_quantization)
        pool = {"image": x}
        return [self._run_stage(k, pool) for k in range(len(self.interpreters))]

    def all_exit_logits(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """(K, N, classes) logits of every exit, running every stage on every image."""
        x = self.stage_input(images)
        per_batch = []
        for start in range(0, len(x), batch_size):
            per_batch.append(np.stack(self.run_stages(x[start:start + batch_size])))
        return np.concatenate(per_batch, axis=1)
