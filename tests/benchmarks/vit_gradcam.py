"""Grad-CAM on a full ViT-S/16 at 224 (random seeded weights), batch 16: onnxcam vs one forward and
vs pytorch-grad-cam on the same weights (its ``reshape_transform`` for the class token + 14x14 grid).

    PYTHONPATH=. python tests/benchmarks/vit_gradcam.py [--repeats 3] [--batch 16]

Prints the best-of-``repeats`` wall times: one onnxruntime forward of the batch; onnxcam Grad-CAM at
the auto layer (the last block's input, seen as tokens 1+14x14); pytorch-grad-cam's GradCAM at the
same tensor; the two ratios (targets: onnxcam <= 1.3x one forward, >= 5x faster than
pytorch-grad-cam), and the Pearson correlation of the two libraries' maps.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import THREADS, best, photos, preprocess, stub_torchvision

import onnxcam  # noqa: E402
from models.build import MODELS, build  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    stub_torchvision()
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.set_num_threads(THREADS)
    spec = MODELS["vit_small_224"]
    path = build("vit_small_224")
    x = preprocess(photos(args.batch), spec.spatial, spec.mean, spec.std)

    model = onnxcam.load(path, device="cpu", threads=THREADS)
    layer = model.layer("auto")
    cam = onnxcam.GradCAM(model, batch_size=args.batch)
    classes = [int(c) for c in model.forward(x, args.batch)[0].argmax(1)]
    fwd = best(lambda: model.forward(x, args.batch), args.repeats)
    ours = best(lambda: cam(x, targets=classes), args.repeats)

    net = spec.factory()

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:, :].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)

    ref = GradCAM(model=net, target_layers=[net.blocks[-2]], reshape_transform=to_map)
    xt = torch.from_numpy(x)
    targets = [ClassifierOutputTarget(k) for k in classes]
    theirs = best(lambda: ref(input_tensor=xt, targets=targets), args.repeats)
    a, b = cam(x, targets=classes), ref(input_tensor=xt, targets=targets)
    r = min(float(np.corrcoef(u.ravel(), v.ravel())[0, 1]) for u, v in zip(a, b))
    ref.activations_and_grads.release()

    print(f"ViT-S/16 224, batch {args.batch}, {THREADS} threads, layer {layer.name} ({layer.grid})")
    print(f"{'one forward (onnxruntime)':40} {fwd:8.3f} s")
    print(f"{'onnxcam Grad-CAM':40} {ours:8.3f} s   {ours / fwd:5.2f}x forward  (target <= 1.3x)")
    print(f"{'pytorch-grad-cam GradCAM':40} {theirs:8.3f} s   {theirs / ours:5.1f}x onnxcam (target >= 5x)")
    print(f"{'map Pearson (min over images)':40} {r:8.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
