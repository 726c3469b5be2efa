"""Did the code change what a preset trains between two commits? (issue 44)

    python benchmarks/code_drift.py --commits 85c05ac,ed383ad,f4458e7 --preset fusionnet-cifar

Each commit is checked out in a temporary ``git worktree`` and, in a process of its own, builds
the preset at seed 0, then on fixed inputs: the initial weights, the forward outputs, three
training steps of the 30-epoch recipe (lr 0.05, warmup 2 of 30 epochs, label smoothing 0.1,
coupled weight decay; the same starting weights everywhere) and the first three augmented batches
of the input pipeline (crop and flip, seed 0). Every later commit is compared with the first,
bit for bit; the result goes to ``--out``. Equal everywhere means a difference between runs
trained at those commits did not come from the model, the loss, the optimizer or the pipeline.
"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROBE = r'''
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, os.getcwd())
import numpy as np, keras
from tf_fusionnet.presets import build_model
from tf_fusionnet.training.config import TrainConfig
from tf_fusionnet.training.trainer import compile_for_training
from tf_fusionnet.data.pipeline import AugmentConfig, make_train_dataset
preset, ref, out = sys.argv[1], sys.argv[2], sys.argv[3]
keras.utils.set_random_seed(0)
m = build_model(preset, num_classes=10, image_shape=(32, 32, 3))
init = m.get_weights()
if os.path.exists(ref):
    stored = np.load(ref)
    start = [stored[f"arr_{i}"] for i in range(len(stored.files))]
else:
    start = init
    np.savez(ref, *init)
m.set_weights(start)
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 32, 32, 3)).astype("float32")
forward = np.concatenate([np.asarray(o).ravel() for o in m(x, training=False)])
compile_for_training(m, TrainConfig(preset=preset, lr=0.05, warmup_epochs=2, epochs=30, batch_size=32, mix_prob=0.0),
                     100, False)
y = keras.utils.to_categorical(rng.integers(0, 10, 32), 10)
losses = [float(m.train_on_batch(x, [y] * len(m.outputs), return_dict=True)["loss"]) for _ in range(3)]
after = np.concatenate([w.ravel() for w in m.get_weights()])
images = rng.integers(0, 256, size=(300, 32, 32, 3)).astype("uint8")
aug = AugmentConfig(random_crop=True, pad=-1, flip=True, mix_prob=0.0, cutmix_share=0.5, mixup_alpha=0.8, cutmix_alpha=1.0)
ds = make_train_dataset(images, rng.integers(0, 10, 300), num_classes=10, num_exits=len(m.outputs), batch_size=64,
                        mean=[120.0] * 3, std=[60.0] * 3, augment=aug, seed=0)
batches = np.stack([np.asarray(b[0]) for b in ds.take(3)])
np.savez(out, init=np.concatenate([w.ravel() for w in init]), forward=forward, losses=np.array(losses), after=after,
         batches=batches, params=np.array(m.count_params()))
'''


def main() -> None:
    import argparse

    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", required=True, help="comma-separated commits, the first the reference")
    parser.add_argument("--preset", default="fusionnet-cifar")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "code_drift.json"))
    args = parser.parse_args()
    commits = args.commits.split(",")
    with tempfile.TemporaryDirectory(prefix="code-drift-") as tmp:
        probe, ref = os.path.join(tmp, "probe.py"), os.path.join(tmp, "start.npz")
        with open(probe, "w") as f:
            f.write(PROBE)
        found = {}
        for commit in commits:
            tree = os.path.join(tmp, commit)
            subprocess.run(["git", "worktree", "add", "--detach", tree, commit], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                subprocess.run([sys.executable, probe, args.preset, ref, os.path.join(tmp, f"{commit}.npz")],
                               cwd=tree, check=True)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, capture_output=True)
            with np.load(os.path.join(tmp, f"{commit}.npz")) as stored:
                found[commit] = {k: stored[k] for k in stored.files}
    first = found[commits[0]]
    report = {"preset": args.preset, "reference": commits[0], "compared": {}}
    for commit in commits[1:]:
        other = found[commit]
        report["compared"][commit] = {
            key: (bool(first[key].shape == other[key].shape and np.array_equal(first[key], other[key])))
            for key in ("params", "init", "forward", "losses", "after", "batches")}
    report["losses"] = {c: found[c]["losses"].tolist() for c in commits}
    from tf_fusionnet.utils import atomic_write_json

    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
