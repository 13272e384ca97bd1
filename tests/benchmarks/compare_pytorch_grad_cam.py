"""onnxcam vs pytorch-grad-cam 1.5.7, same weights, same threads (2 torch, 2 onnxruntime), one run.

    PYTHONPATH=. python tests/benchmarks/compare_pytorch_grad_cam.py [--quick] [--models efficientnet_lite0,resnet50]

Prints one table: model x method x batch -> pytorch-grad-cam seconds, onnxcam seconds, speed-up, and
onnxcam seconds / one onnxcam forward of the same batch. Times are the best of --repeats runs after a
warm-up run (sessions and gradient graphs are built once in the warm-up; pytorch-grad-cam's hooks too).
Slow reference rows (Ablation-CAM, Score-CAM: ~1 minute per image and model) run once, no warm-up.
--quick: EfficientNet-Lite0 only, and pytorch-grad-cam's Ablation-CAM timed on 1/8 of the channels and
scaled up (marked "est."; its cost is linear in the number of ablated channels).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from _common import THREADS, best, best_pair, photos, preprocess, stub_torchvision

stub_torchvision()

import torch  # noqa: E402
from pytorch_grad_cam import AblationCAM as PAblation  # noqa: E402
from pytorch_grad_cam import GradCAM as PGradCAM  # noqa: E402
from pytorch_grad_cam import GradCAMPlusPlus as PGradCAMPP  # noqa: E402
from pytorch_grad_cam import LayerCAM as PLayerCAM  # noqa: E402
from pytorch_grad_cam import ScoreCAM as PScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import onnxcam  # noqa: E402
from models.build import MODELS, build  # noqa: E402

GRADIENT = (("gradcam", PGradCAM, onnxcam.GradCAM), ("gradcam++", PGradCAMPP, onnxcam.GradCAMPlusPlus),
            ("layercam", PLayerCAM, onnxcam.LayerCAM))


def _row(rows: list[dict[str, Any]], **kw: Any) -> None:
    kw["speedup"] = kw["ref_s"] / kw["onnxcam_s"]
    rows.append(kw)
    est = " est." if kw.get("estimated") else ""
    print(f"  {kw['model']:<19}{kw['method']:<26}{kw['batch']:>6}{kw['ref_s']:>11.3f}{est:<5}{kw['onnxcam_s']:>10.3f}"
          f"{kw['speedup']:>10.1f}{kw['x_forward']:>10.2f}", flush=True)


def bench_model(name: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    spec = MODELS[name]
    path = build(name)
    torch_path, tensor = spec.layers["last"]
    net = spec.factory().eval()
    layer_module = net.get_submodule(torch_path)
    model = onnxcam.load(path, device="cpu", threads=THREADS)
    x = preprocess(photos(args.batch), spec.spatial, spec.mean, spec.std)
    x1 = x[:1]
    xt, xt1 = torch.from_numpy(x), torch.from_numpy(x1)
    labels = model.forward(x)[0].argmax(axis=1)
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    fwd = best(lambda: model.forward(x, args.batch), args.repeats)
    fwd1 = best(lambda: model.forward(x1, 1), args.repeats)
    with torch.no_grad():
        tfwd = best(lambda: net(xt), args.repeats)
    print(f"  {name}: onnxcam forward batch {args.batch} {fwd:.3f} s, batch 1 {fwd1:.4f} s; "
          f"torch forward batch {args.batch} {tfwd:.3f} s", flush=True)
    common = {"model": name}

    for method, pcls, ocls in GRADIENT:
        with pcls(model=net, target_layers=[layer_module]) as ref:
            ref_s = best(lambda: ref(input_tensor=xt, targets=targets), args.repeats)  # noqa: B023
        cam = ocls(model, tensor, batch_size=args.batch)
        ours, fwd_now = best_pair(lambda: cam(x, [int(c) for c in labels]),  # noqa: B023
                                  lambda: model.forward(x, args.batch), max(args.repeats, 7))
        _row(rows, **common, method=method, batch=args.batch, ref_s=ref_s, onnxcam_s=ours, x_forward=ours / fwd_now)

    t1 = [targets[0]]
    channels = int(model.tensor_info(tensor).shape[1])  # type: ignore[index]
    if not args.skip_ablation:
        ratio = 0.125 if args.quick else 1.0
        ref = PAblation(model=net, target_layers=[layer_module], batch_size=args.ablation_batch,
                        ratio_channels_to_ablate=ratio)
        t = time.perf_counter()
        ref(input_tensor=xt1, targets=t1)
        ref_s = (time.perf_counter() - t) / ratio
        cam = onnxcam.AblationCAM(model, tensor, batch_size=args.ablation_batch)
        ours = best(lambda: cam(x1, [int(labels[0])]), args.repeats)
        _row(rows, **common, method=f"ablationcam ({channels} ch)", batch=1, ref_s=ref_s, onnxcam_s=ours,
             x_forward=ours / fwd1, estimated=ratio < 1)

    if not args.skip_score:
        ref = PScoreCAM(model=net, target_layers=[layer_module])
        ref.batch_size = args.score_batch
        t = time.perf_counter()
        ref(input_tensor=xt1, targets=t1)
        ref_s = time.perf_counter() - t
        for k in (None, 64):
            cam = onnxcam.ScoreCAM(model, tensor, batch_size=args.score_batch, max_channels=k)
            ours = best(lambda: cam(x1, [int(labels[0])]), max(1, args.repeats - 1))  # noqa: B023
            label = "scorecam exact" if k is None else f"scorecam max_channels={k}"
            _row(rows, **common, method=label, batch=1, ref_s=ref_s, onnxcam_s=ours, x_forward=ours / fwd1)
        acts = model.run_body(x1, (tensor,))[0][tensor][0]
        flat = acts.reshape(acts.shape[0], -1)
        const = int(np.count_nonzero(flat.max(axis=1) == flat.min(axis=1)))
        print(f"  ({name}: {const} of {channels} channels constant on image 0, scored once by onnxcam)", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated (default: efficientnet_lite0,resnet50)")
    p.add_argument("--quick", action="store_true", help="~10 min: EfficientNet-Lite0 only, estimated reference "
                                                        "Ablation-CAM")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ablation-batch", type=int, default=64)
    p.add_argument("--score-batch", type=int, default=64)
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--skip-score", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    names = [n for n in (args.models or ("efficientnet_lite0" if args.quick else "efficientnet_lite0,resnet50"))
             .split(",") if n]
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}, onnxruntime threads {THREADS}")
    print(f"  {'model':<19}{'method':<26}{'batch':>6}{'pgc s':>11}{'':<5}{'onnxcam s':>10}{'speed-up':>10}"
          f"{'x fwd':>10}")
    rows: list[dict[str, Any]] = []
    for name in names:
        bench_model(name, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
