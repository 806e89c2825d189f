"""The names the command line offers as choices, in a module that imports nothing heavy.

``fer-ray`` builds its whole argument parser before running any stage; if the parser took
these from the modules that use them it would import torch first (1-4 s), which every
command, ``--help`` and ``fer-ray score`` included, would pay before doing any work. The
modules that own each list import it from here, so there is still one definition.
"""

MODEL_NAMES = ("vgg16", "vgg16_bn", "resnet50", "small_cnn", "fast_cnn_s", "fast_cnn", "fast_cnn_m", "fast_cnn_l")  # fer_ray.models.MODELS keys
TTA_MODES = ("none", "flip", "tencrop")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
SVM_SOLVERS = ("liblinear", "sgd")
SVM_LOSSES = ("hinge", "squared_hinge")
# Chosen by `fer-ray sweep svm` on FER2013 (benchmarks/RESULTS.md); a good start elsewhere.
SVM_DEFAULT_LAMBDA = 0.56
# The largest side, in pixels, of a catalog's images (prepare --size), so also the most an
# artifact's model.json may ask for: one face costs memory by the square of it in every batch.
MAX_SIDE = 1024
# The largest network input side (train --input-size, model.json's input_size). Faces are 48 px
# crops, upscaled at most to about the paper's 200 px (resnet50 at 192, docs/train.md); a larger
# input shows a model no more of a face, while every layer's activations grow with its square:
# at 1024 px each fast_cnn layer output is 134 MB a face, 16 times what it is at 256.
MAX_INPUT_SIZE = 256
