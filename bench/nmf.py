"""Speed of the NMF method's building blocks, each beside the per-item loop it replaces, in one run:

* NMF: all classes in one batched HALS solve vs sklearn's NMF (solver 'cd', the paper's) class by class, same
  data, same nndsvda init, tolerance and iteration cap (classes per second; also the mean error ratio), at two
  shapes: a small one (``--classes`` of ``--rows`` x ``--channels``, default 64 of 980 x 128: 20 images of 7 x 7
  cells) and the paper's ResNet-50 layer4.2
  (60 images x 7 x 7 = 2,940 rows x 2,048 channels, ``--paper-classes``; 0 skips it; ``--paper-rows 11760
  --paper-channels 1024`` for layer3.5);
* relevance: DeepLift + SmoothGrad and gradient x activation at a batch vs one image at a time (images per
  second), on the synthetic world's CNN (random weights, 64 x 64 images, layer3);
* hyperplanes: all ordered class pairs in one batched gradient descent vs one nn.Linear + SGD per pair, same
  steps (pairs per second).

    python bench/nmf.py                       # about 2 min on 2 shared CPU cores
    python bench/nmf.py --classes 96 --out bench/results/nmf.json

The loops run on a subset (``--loop-*``) and are extrapolated as items per second. Each block is warmed up
first; batched runs and loops are timed ``--repeats`` times and the fastest counts (a shared machine's load only ever slows a run down).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_explain.attribution.relevance import deeplift_compatible, deeplift_smoothgrad, gradient_x_activation  # noqa: E402
from lit_explain.decomposition.hyperplanes import pairwise_hyperplanes  # noqa: E402
from lit_explain.decomposition.nmf import batched_nmf  # noqa: E402
from lit_explain.models.synthetic_cnn import synthetic_cnn  # noqa: E402


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def bench_nmf(args, device, B: int, n: int, C: int, loop_classes: int) -> dict:
    """Planted low-rank non-negative data with noise, (B, n, C): rank k + 2 plus 5 % uniform noise."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    g = torch.Generator().manual_seed(0)
    k = args.k
    W = torch.rand(B, n, k + 2, generator=g) ** 3
    H = torch.rand(B, k + 2, C, generator=g) ** 3
    X = (W @ H + 0.05 * torch.rand(B, n, C, generator=g)).to(device)
    def batched():
        r = batched_nmf(X, k, max_iter=200, tol=1e-4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return r

    batched_nmf(X[:2], k, max_iter=5)  # warm-up: first-call costs (library loading, thread pools)
    runs = [_timed(batched) for _ in range(args.repeats)]
    res, t_batched, c_batched = min(runs, key=lambda r: r[1])
    m = min(loop_classes, B)
    Xs = [X[b].cpu().double().numpy() for b in range(m)]

    def sk_fit(xb):
        model = NMF(n_components=k, init="nndsvda", solver="cd", max_iter=200, tol=1e-4, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            wb = model.fit_transform(xb)
        return float(((xb - wb @ model.components_) ** 2).sum() ** 0.5 / (xb ** 2).sum() ** 0.5), int(model.n_iter_)

    sk_fit(Xs[0])  # warm-up
    loops = [_timed(lambda: [sk_fit(xb) for xb in Xs]) for _ in range(args.repeats)]
    fits, t_loop, c_loop = min(loops, key=lambda r: r[1])
    errs, its = [e for e, _ in fits], [i for _, i in fits]
    ratio = res.error[:m].double().cpu() / torch.tensor(errs)
    return {"classes": B, "rows": n, "channels": C, "k": k, "batched_classes_per_s": B / t_batched,
            "sklearn_classes_per_s": m / t_loop, "speedup": (B / t_batched) / (m / t_loop),
            "speedup_cpu_time": (B / c_batched) / (m / c_loop),
            "error_ratio_batched_over_sklearn_mean": float(ratio.mean()),
            "error_ratio_batched_over_sklearn_max": float(ratio.max()),
            "batched_mean_iterations": float(res.n_iter.float().mean()), "sklearn_mean_iterations": sum(its) / m}


def bench_relevance(args, device) -> dict:
    torch.manual_seed(0)
    model = deeplift_compatible(synthetic_cnn(num_classes=8).eval(), torch.randn(1, 3, 64, 64)).to(device)
    layer = model.get_submodule("layer3")
    x = torch.randn(args.images, 3, 64, 64, device=device)
    t = torch.arange(args.images, device=device) % 8
    out = {}
    for name, fn in (("deeplift_smoothgrad", lambda xs, ts: deeplift_smoothgrad(model, layer, xs, ts, n_samples=5,
                                                                                 stdevs=0.25, samples_per_pass=5)),
                     ("gradient_x_activation", lambda xs, ts: gradient_x_activation(model, layer, xs, ts))):
        fn(x[:2], t[:2])  # warm-up
        tb = min(_timed(lambda: fn(x, t))[1] for _ in range(args.repeats))
        m = min(args.loop_images, args.images)
        tl = min(_timed(lambda: [fn(x[i : i + 1], t[i : i + 1]) for i in range(m)])[1] for _ in range(args.repeats))
        out[name] = {"batched_images_per_s": args.images / tb, "batch1_images_per_s": m / tl,
                     "speedup": (args.images / tb) / (m / tl)}
    out["images"] = args.images
    return out


def bench_hyperplanes(args, device) -> dict:
    g = torch.Generator().manual_seed(1)
    K, N, C, steps = args.hp_classes, args.hp_vectors, args.channels, 100
    feats = (torch.randn(K, N, C, generator=g) + torch.randn(K, 1, C, generator=g)).to(device)
    counts = torch.full((K,), N, device=device)
    pairwise_hyperplanes(feats[:3], counts[:3], steps=2)  # warm-up
    tb = min(_timed(lambda: pairwise_hyperplanes(feats, counts, steps=steps, lr=0.01))[1] for _ in range(args.repeats))
    pairs = K * (K - 1)
    y = torch.cat([torch.zeros(N), torch.ones(N)]).to(device)[:, None]

    def one_pair(p):
        """The paper's training of one pair: nn.Linear, BCE-with-logits, full-batch SGD."""
        i, j = p % K, (p // K + 1 + p % K) % K
        lin = nn.Linear(C, 1).to(device)
        nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)
        opt = torch.optim.SGD(lin.parameters(), lr=0.01)
        x = torch.cat([feats[i], feats[j]])
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(lin(x), y).backward()
            opt.step()

    one_pair(0)  # warm-up (torch.optim's first step loads a lot)
    m = args.loop_pairs
    tl = min(_timed(lambda: [one_pair(p) for p in range(m)])[1] for _ in range(args.repeats))
    return {"classes": K, "pairs": pairs, "vectors_per_class": N, "channels": C, "steps": steps,
            "batched_pairs_per_s": pairs / tb, "loop_pairs_per_s": m / tl, "speedup": (pairs / tb) / (m / tl)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=64, help="classes factorised by the batched NMF")
    p.add_argument("--rows", type=int, default=980, help="rows (pixels) per class")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--loop-classes", type=int, default=12, help="classes run through the sklearn loop")
    p.add_argument("--paper-classes", type=int, default=8,
                   help="classes of the paper-shape NMF block (2,940 x 2,048, ResNet-50 layer4.2); 0 skips it")
    p.add_argument("--paper-loop-classes", type=int, default=2, help="of those, classes run through sklearn")
    p.add_argument("--paper-rows", type=int, default=2940,
                   help="rows of a paper-shape class: 60 images x 7 x 7 (layer4.2); 11760 = 60 x 14 x 14 (layer3.5)")
    p.add_argument("--paper-channels", type=int, default=2048, help="2048 (layer4.2) or 1024 (layer3.5)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--loop-images", type=int, default=8)
    p.add_argument("--hp-classes", type=int, default=60)
    p.add_argument("--hp-vectors", type=int, default=60)
    p.add_argument("--loop-pairs", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2, help="times each measurement runs; the fastest counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and BLAS threads (default 1: sklearn's cd solver is single-threaded, and on a shared "
                        "machine OpenMP threads that wait for each other cost more than they bring)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    import sklearn.decomposition  # noqa: F401  (load its BLAS and OpenMP before limiting: threadpoolctl only
    from threadpoolctl import threadpool_info, threadpool_limits  # limits the libraries already loaded)

    threadpool_limits(args.threads)
    pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
    if any(n != args.threads for _, n in pools):
        raise RuntimeError(f"bench/nmf.py: thread pools not limited to {args.threads}: {pools}")
    t0 = time.perf_counter()
    result = {"argv": sys.argv[1:] if argv is None else list(argv), "device": str(device),
              "threads": args.threads, "thread_pools": pools,
              "nmf": bench_nmf(args, device, args.classes, args.rows, args.channels, args.loop_classes),
              "nmf_paper_shape": (bench_nmf(args, device, args.paper_classes, args.paper_rows, args.paper_channels,
                                            args.paper_loop_classes)
                                  if args.paper_classes else None),
              "relevance": bench_relevance(args, device),
              "hyperplanes": bench_hyperplanes(args, device)}
    result["total_s"] = time.perf_counter() - t0
    print(json.dumps(result, indent=2))
    n, r, h = result["nmf"], result["relevance"], result["hyperplanes"]
    nmf_rows = "".join(
        f"| NMF ({x['classes']} classes, {x['rows']}x{x['channels']}, k={x['k']}) classes/s | "
        f"{x['batched_classes_per_s']:.2f} | {x['sklearn_classes_per_s']:.3f} (sklearn) | {x['speedup']:.1f}x "
        f"(CPU time {x['speedup_cpu_time']:.1f}x; error ratio mean {x['error_ratio_batched_over_sklearn_mean']:.4f}, "
        f"max {x['error_ratio_batched_over_sklearn_max']:.4f}; iterations {x['batched_mean_iterations']:.0f} vs "
        f"{x['sklearn_mean_iterations']:.0f}) |\n"
        for x in (n, result["nmf_paper_shape"]) if x)
    print(f"\n| block | batched | loop | ratio |\n|---|---|---|---|\n{nmf_rows}"
          f"| DeepLift+SmoothGrad(5) images/s | {r['deeplift_smoothgrad']['batched_images_per_s']:.1f} | "
          f"{r['deeplift_smoothgrad']['batch1_images_per_s']:.1f} (batch 1) | {r['deeplift_smoothgrad']['speedup']:.1f}x |\n"
          f"| gradient x activation images/s | {r['gradient_x_activation']['batched_images_per_s']:.1f} | "
          f"{r['gradient_x_activation']['batch1_images_per_s']:.1f} (batch 1) | {r['gradient_x_activation']['speedup']:.1f}x |\n"
          f"| hyperplanes ({h['pairs']} pairs, {h['steps']} steps) pairs/s | {h['batched_pairs_per_s']:.0f} | "
          f"{h['loop_pairs_per_s']:.1f} (per pair) | {h['speedup']:.0f}x |\n"
          f"total {result['total_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
