"""Grad-CAM on a full ViT-S/16 at 224 (timm ``vit_small_patch16_224``, ``pretrained=False``, seeded random
weights), batch 16: onnxcam vs one onnxruntime forward, and vs pytorch-grad-cam on the same weights (its
``reshape_transform`` for the class token + 14x14 grid).

    PYTHONPATH=. python tests/benchmarks/vit_gradcam.py [--repeats 5] [--batch 16] [--threads 2]

Everything is measured in one run, the three timed calls interleaved round by round (forward, onnxcam,
pytorch-grad-cam, forward, ...) after a warm-up of each, so a machine that speeds up or slows down between
rounds moves all three alike; the ratios use the best round of each (the median is printed too).

Fairness: both libraries get the same threads (``--threads``, for onnxruntime's intra-op pool and
``torch.set_num_threads``), the same batch and the same layer (the input of the last block, seen as tokens
1+14x14). pytorch-grad-cam runs as users run it: its defaults (the module in eval mode, parameters
requiring grad, so its backward goes through every block), on timm's default module (fused
``scaled_dot_product_attention``; the ONNX file was exported from the same weights with the explicit
softmax path, the same function). onnxcam runs its defaults: sessions at ORT_ENABLE_ALL, the last block
run on the class token only past its keys and values (``onnxcam.graph.select_early``: the classifier reads
that token alone) in the body and the gradient graph, and the body's attentions as one onnxruntime kernel
each (``onnxcam.graph.fuse``); ``model.forward`` (the "one forward" here) runs the graph as exported. The
breakdown also times the body with both passes off (``select_rows = False``), the baseline of that saving.

Targets (issue 15): onnxcam Grad-CAM <= 1.3x one forward, >= 5x faster than pytorch-grad-cam. The
breakdown lines say where onnxcam's time goes (the body run is one forward that also returns the layer;
the gradient graph re-runs the last block and the head forward, then back-propagates through them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from _common import photos, preprocess, stub_torchvision

import onnxcam  # noqa: E402
from models.build import MODELS, build  # noqa: E402


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each function over ``repeats`` rounds, one call of each per round (after a warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    stub_torchvision()
    import onnxruntime as ort
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.set_num_threads(args.threads)
    spec = MODELS["vit_small_224"]
    assert spec.input_shape == (3, 224, 224) and spec.num_classes == 1000
    path = build("vit_small_224")
    x = preprocess(photos(args.batch), spec.spatial, spec.mean, spec.std)

    model = onnxcam.load(path, device="cpu", threads=args.threads)
    exported = onnxcam.load(path, device="cpu", threads=args.threads)
    exported.select_rows = False
    layer = model.layer("auto")
    cam = onnxcam.GradCAM(model, batch_size=args.batch)
    classes = [int(c) for c in model.forward(x, args.batch)[0].argmax(1)]

    net = spec.factory()
    for m in net.modules():  # timm's default attention kernel, as users run it (models/ turns it off)
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    side = spec.spatial[0] // 16

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    ref = GradCAM(model=net, target_layers=[net.blocks[-2]], reshape_transform=to_map)
    xt = torch.from_numpy(x)
    targets = [ClassifierOutputTarget(k) for k in classes]
    full_backward = all(p.requires_grad for p in net.parameters())

    def torch_forward() -> object:
        with torch.no_grad():
            return net(xt)

    def torch_forward_backward() -> None:
        out = net(xt)
        out[torch.arange(len(classes)), torch.tensor(classes)].sum().backward()
        net.zero_grad(set_to_none=True)

    times = interleaved({
        "forward": lambda: model.forward(x, args.batch),
        "onnxcam": lambda: cam(x, targets=classes),
        "pgc": lambda: ref(input_tensor=xt, targets=targets),
    }, args.repeats)  # fmt: skip
    cut = model.frontier((layer.name,))
    parts = interleaved({
        "exported": lambda: exported.run_body(x, cut, args.batch),
        "body": lambda: model.run_body(x, cut, args.batch),
        "gradients": lambda: cam.gradients(x, classes),
        "torch forward": torch_forward,
        "torch forward+backward": torch_forward_backward,
    }, max(2, args.repeats // 2))  # fmt: skip
    a, b = cam(x, targets=classes), ref(input_tensor=xt, targets=targets)
    r = min(float(np.corrcoef(u.ravel(), v.ravel())[0, 1]) for u, v in zip(a, b))
    ref.activations_and_grads.release()

    fwd, ours, theirs = (min(times[k]) for k in ("forward", "onnxcam", "pgc"))
    body, grads = min(parts["body"]), min(parts["gradients"])
    print(f"ViT-S/16 (timm vit_small_patch16_224, random weights) at {spec.spatial[0]}x{spec.spatial[1]}, "
          f"batch {args.batch}, {args.threads} threads; layer {layer.name} ({layer.grid})")
    print(f"onnxruntime {ort.__version__} (ORT_ENABLE_{model.optimization.upper()}, intra-op threads {args.threads}, "
          f"spinning within a run); torch {torch.__version__} ({torch.get_num_threads()} threads, fused attention); "
          f"pytorch-grad-cam backward through every block: {'yes' if full_backward else 'no'}")
    print(f"{args.repeats} interleaved rounds; best (median) wall times:")

    def row(label: str, values: list[float], note: str = "") -> None:
        print(f"  {label:44} {min(values):7.3f} s ({statistics.median(values):7.3f}) {note}")

    row("one forward (onnxruntime)", times["forward"])
    row("onnxcam Grad-CAM", times["onnxcam"], f"{ours / fwd:5.2f}x forward  (target <= 1.3x)")
    row("pytorch-grad-cam GradCAM", times["pgc"], f"{theirs / ours:5.2f}x onnxcam (target >= 5x)")
    print("breakdown:")
    plain = min(parts["exported"])
    row("body run, graph as exported (passes off)", parts["exported"], f"{plain / fwd:5.2f}x forward")
    row("onnxcam body run (forward + layer)", parts["body"], f"{body / fwd:5.2f}x forward")
    row("onnxcam gradients (body + gradient graph)", parts["gradients"],
        f"graph {grads - body:.3f} s = {(grads - body) / fwd:4.2f}x forward")
    print(f"  {'onnxcam method + resize (the rest)':44} {max(ours - grads, 0.0):7.3f} s")
    row("torch forward (no grad)", parts["torch forward"],
        f"{min(parts['torch forward']) / fwd:5.2f}x onnxruntime's forward")
    row("torch forward + full backward", parts["torch forward+backward"])
    print(f"  {'map Pearson, onnxcam vs pytorch-grad-cam':44} {r:7.5f} (min over images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
