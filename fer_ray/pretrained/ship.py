"""Make a trained run the shipped default model: copy its artifact here and write its model card.

    python -m fer_ray.pretrained.ship --run-dir RUN --command "fer-ray train ..." [--name NAME]

RUN is a finished ``fer-ray train`` run directory (``artifact/`` and ``result.json``, whose
evaluations and history the card is generated from), so every figure in it is the one
the run measured, and ``tests/test_pretrained.py`` checks the shipped model still earns it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fer_ray.artifacts import META_FILE, WEIGHTS_FILE, read_meta
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError
from fer_ray.evaluation.report import confusion_table, per_class_table
from fer_ray.pretrained import DEFAULT_MODEL, default_artifact
from fer_ray.rundir import RESULT, result

MAX_BYTES = 10 * 1024 * 1024  # what a wheel can carry without burdening every install


def model_card(name: str, meta: dict, val: dict, test: dict, history: list[dict], command: str) -> str:
    """MODEL_CARD.md: data, split, protocol, figures, confusion matrix, assumptions and limits."""
    recipe = meta["recipe"]
    minutes = sum(row["epoch_seconds"] for row in history) / 60
    lines = [
        f"# {name}", "",
        f"The model fer-ray uses when no `--artifact` is given: a `{meta['architecture']}` "
        f"({meta['parameters']['total']:,} parameters), trained by fer-ray's own Ray Train path on a "
        f"2-CPU machine ({len(history)} epochs, {minutes:.0f} min of training).", "",
        "## Data and protocol", "",
        "- Training data: FER2013 (Goodfellow et al., 2013), the `Training` usage (28,709 48x48 grey "
        "face crops) as the widely used image-folder layout; a seeded, stratified 10% of it is the "
        f"validation split ({val['count']:,} faces) used for nothing but monitoring, so "
        f"{28_709 - val['count']:,} faces train the model.",
        f"- Test: FER2013 `PublicTest` ({test['count']:,} faces), never used for any choice. "
        "(`PrivateTest` is not available to this project.)",
        "- Accuracy is micro-averaged (= micro P = micro R on single-label data); macro figures are "
        "the unweighted mean over the 7 emotions; no test-time augmentation.", "",
        "## Results", "",
        "| split | faces | accuracy | macro precision | macro recall | macro F1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for split, m in (("val (10% of Training)", val), ("PublicTest", test)):
        lines.append(f"| {split} | {m['count']:,} | {m['accuracy']:.1%} | {m['macro']['precision']:.3f} | "
                     f"{m['macro']['recall']:.3f} | {m['macro']['f1']:.3f} |")
    flip = meta.get("metrics", {}).get("test+tta-flip")
    if flip:
        lines += ["", f"With flip test-time augmentation (each face and its mirror image averaged; "
                      f"`--tta flip`, twice the compute) PublicTest accuracy is {flip['accuracy']:.1%} "
                      f"(macro F1 {flip['macro_f1']:.3f})."]
    lines += ["", "Per emotion on PublicTest (no test-time augmentation):", "", *per_class_table(test, 3),
              "", "Confusion matrix on PublicTest (rows: true emotion, columns: predicted):", "",
              *confusion_table(test)]
    aug = recipe["augment"]
    recall = {e: test["per_class"][e]["recall"] for e in EMOTIONS}
    weakest = " and ".join(f"{e} (recall {recall[e]:.2f})" for e in sorted(recall, key=recall.get)[:2])
    cm = test["confusion_matrix"]
    pairs = sorted(((cm[i][j], EMOTIONS[i], EMOTIONS[j]) for i in range(len(EMOTIONS)) for j in range(len(EMOTIONS))
                    if i != j), reverse=True)[:3]
    confusions = ", ".join(f"{t} taken for {p} ({n} faces)" for n, t, p in pairs)
    lines += [
        "", "## Input assumptions", "",
        "- One grey face crop per prediction, roughly frontal, the face filling most of the square "
        "(as FER2013's crops do). Colour input is converted to grey (ITU-R 601 luminance).",
        f"- Crops are resized to {meta['image_size']}x{meta['image_size']} and normalised with the "
        f"training pixels' mean {meta['normalization']['mean']:.4f} and std {meta['normalization']['std']:.4f} "
        "(0..1 scale); `Predictor` does this for every caller.",
        "- In photos and videos (`fer-ray predict`, `score`, `serve`), faces are found by CenterFace, "
        "levelled from their eyes and cropped as FER2013's faces are framed "
        "([docs/score.md](../../../docs/score.md#faces-in-photos)): profile, small (under ~48 px "
        "without `--small-faces`) or occluded faces are often missed.", "",
        "## Known limits", "",
        "- FER2013's labels are noisy (human accuracy on it is estimated at ~65%) and the data holds "
        "duplicates, some across Training and PublicTest, a few with conflicting labels, and a dozen "
        "blank images; figures here include them as they are.",
        f"- The hardest emotions are {weakest}; disgust is rare (1.5% of training faces). The "
        f"commonest confusions: {confusions}.",
        "- The demographic make-up of FER2013 (age, sex, ethnicity) is not documented; accuracy on any "
        "group is unknown. Posed or acted expressions (KDEF, CK+) differ from FER2013's web images.",
        "- An expression is not an emotion: the model labels facial configurations, not what a person "
        "feels. Do not use it to make decisions about people.", "",
        "## Training", "",
        f"Recipe: {recipe['optimizer'].upper()} (Nesterov momentum {recipe['momentum']}), {recipe['schedule']} "
        f"schedule to lr {recipe['lr']}, weight decay {recipe['weight_decay']}, batch {recipe['batch_size']}, "
        f"label smoothing {recipe['label_smoothing']}, {recipe['epochs']} epochs; augmentation: flip "
        f"{aug['flip']}, rotation ±{aug['rotate_deg']}°, scale ±{aug['scale']:.0%}, shift ±{aug['translate_px']} px, "
        f"random erasing p={aug['erase_p']}, photo degradation (blur, lighting, JPEG noise) "
        f"p={aug.get('photo_p', 0.0)}; bf16 autocast and channels_last on the CPU.", *_distillation(meta), "",
        "```bash", "fer-ray prepare --source folders --input ../shared/data/fer2013 --output catalogs/fer2013",
        command, "```", "",
        "Reproduce the PublicTest figure: `fer-ray evaluate --catalog catalogs/fer2013 --split test "
        "--output eval-default` (no `--artifact`: the default model).", "",
    ]
    return "\n".join(lines)


def _distillation(meta: dict) -> list[str]:
    """The card's line on the teachers a distilled model learned from (``fer-ray train --teacher``)."""
    if not meta.get("teacher"):
        return []
    recipe = meta["recipe"]
    return ["", f"Distilled (`--teacher`, see [docs/train.md](../../../docs/train.md#distillation)) from the "
                f"averaged probabilities of {len(meta['teacher'])} fer-ray model(s), weight "
                f"{recipe['distill_weight']}, temperature {recipe['distill_temperature']}; their weights' SHA-256: "
                f"{', '.join(t[:12] for t in meta['teacher'])}."]


def ship(run_dir: str, command: str, name: str = DEFAULT_MODEL) -> Path:
    run = Path(run_dir)
    meta = read_meta(run / "artifact")
    if (run / "artifact" / WEIGHTS_FILE).stat().st_size > MAX_BYTES:
        raise FerRayError(f"{run / 'artifact' / WEIGHTS_FILE} is over {MAX_BYTES} bytes: too big to ship in the wheel")
    done = result(run)
    if done is None:
        raise FerRayError(f"{run} holds no finished fer-ray train run (no {RESULT})")
    val, test, history = done["evaluations"]["val"], done["evaluations"]["test"], done["history"]
    out = default_artifact().parent / name
    out.mkdir(exist_ok=True)
    shutil.copyfile(run / "artifact" / WEIGHTS_FILE, out / WEIGHTS_FILE)
    # where it was trained is this machine's business; the catalog's checksum says what it was trained on
    meta["catalog"] = {"sha256": meta["catalog"]["sha256"], "name": "FER2013 (folders; Training + 10% val, PublicTest)"}
    if meta.get("teacher"):  # likewise the teachers: by their weights' checksums, not this machine's paths
        meta["teacher"] = [read_meta(t)["weights_sha256"] for t in meta["teacher"]]
    meta["shipped"] = True  # part of the installed package: evaluating it records nothing here
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    (out / "MODEL_CARD.md").write_text(model_card(name, meta, val, test, history, command))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--command", required=True, help="the fer-ray train command that made the run")
    parser.add_argument("--name", default=DEFAULT_MODEL)
    args = parser.parse_args()
    print(f"shipped: {ship(args.run_dir, args.command, args.name)}")


if __name__ == "__main__":
    main()
