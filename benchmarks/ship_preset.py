"""Ship a finished run as a trained preset users load by name (issue 45).

    python benchmarks/ship_preset.py --run RUN --name fusionnet_cifar100 --description "..."

Writes ``--into/NAME/`` (the keras-hub preset folder: config.json, metadata.json with the model
card under ``model_card``, model.weights.h5 in float32), ``--into/NAME.md`` (the card for people)
and NAME's entry in ``--into/index.json`` (with its files' sha256). The run must be evaluated
(``evaluate.py --run RUN``): the card quotes its test figures. Then
``tf_fusionnet.load_model(NAME)`` and ``FusionNet.from_preset(NAME)`` load it, and
``python export/to_tflite.py --preset NAME --out DIR --dataset DATA`` exports it by name.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def ship(run: str, name: str, into: str, description: str, data: str | None = None) -> dict:
    from tf_fusionnet.console import import_tensorflow, setup_environment

    setup_environment()
    import_tensorflow()
    from tf_fusionnet.evaluation.model_card import card_markdown, index_entry, model_card
    from tf_fusionnet.loading import load_model
    from tf_fusionnet.presets import PRETRAINED_FORMAT, PRETRAINED_INDEX
    from tf_fusionnet.utils import atomic_write_json, atomic_write_text, read_json_limited

    card = model_card(run, name, data)
    model = load_model(run)
    model.preset_metadata = {**getattr(model, "preset_metadata", {}), "model_card": card}
    folder = os.path.join(into, name)
    model.save_to_preset(folder)
    atomic_write_text(os.path.join(into, f"{name}.md"), card_markdown(card))
    index_path = os.path.join(into, PRETRAINED_INDEX)
    index = (read_json_limited(index_path) if os.path.exists(index_path)
             else {"format": PRETRAINED_FORMAT, "format_version": 1, "presets": {}})
    index["presets"][name] = index_entry(card, folder, type(model.network).__name__, description)
    atomic_write_json(index_path, index)
    return index["presets"][name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a finished, evaluated run folder")
    parser.add_argument("--name", required=True, help="the preset's name (keras-hub style: fusionnet_cifar100)")
    parser.add_argument("--description", default="", help="one line for summary --list")
    parser.add_argument("--into", default=os.path.join(ROOT, "tf_fusionnet", "pretrained"))
    parser.add_argument("--data", default=None, help="the dataset file, for its sha256 (default: the run's)")
    args = parser.parse_args()
    print(json.dumps(ship(args.run, args.name, args.into, args.description, args.data), indent=1))


if __name__ == "__main__":
    main()
