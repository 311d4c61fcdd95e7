"""``metasam sharpness``: Hessian sharpness of a trained checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from metasam.sharpness import MEASURES

    parser = sub.add_parser(
        "sharpness", help="Hessian sharpness of a checkpoint",
        description="Measure the Hessian of a trained checkpoint on fixed, un-augmented "
        "training examples (eval mode): trace, Frobenius², top eigenvalues, spectral density, "
        "or a preset's measure.")
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a checkpoint written by metasam train (checkpoint.pt)")
    parser.add_argument("--measures", default="trace,frob,lmax",
                        help=f"comma-separated: {', '.join(MEASURES)}")
    parser.add_argument("--examples", type=int, default=1280, help="training examples used")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="examples per Hessian-vector-product batch (default 256)")
    parser.add_argument("--probes", type=int, default=100, help="probes per estimate")
    parser.add_argument("--density-runs", type=int, default=10,
                        help="Lanczos runs of the density estimate (default 10)")
    parser.add_argument("--density-steps", type=int, default=30,
                        help="Lanczos steps per density run (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the data (default: the checkpoint's, "
                        "$METASAM_DATA or ./data)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="where the density plot goes (default: density.png next to the "
                        "checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from metasam.sharpness import estimate, evaluation_batches
    from metasam.sharpness.estimators import check_name
    from metasam.sharpness.plot import plot_density
    from metasam.training.trainer import load_trained

    measures = [m for m in args.measures.split(",") if m]
    for m in measures:
        check_name(m)
    model, splits, config = load_trained(args.checkpoint, args.data_dir, args.device)
    device = next(model.parameters()).device
    batches = evaluation_batches(splits.train, args.examples, args.batch_size, device)
    from metasam._progress import Progress

    progress = Progress("sharpness", unit="Hessian-vector products")
    note = f"{', '.join(measures)} on {sum(int(y.shape[0]) for _, y in batches)} examples"
    progress.update(0, note, force=True)
    results = estimate(model, F.cross_entropy, batches, measures, probes=args.probes,
                       seed=args.seed, density_runs=args.density_runs,
                       density_steps=args.density_steps,
                       progress=lambda n: progress.update(n, note))
    progress.close()
    plot_path = None
    if "density" in results:
        plot_path = Path(args.plot) if args.plot else Path(args.checkpoint).with_name(
            "density.png")
        plot_density(results["density"].extra, plot_path,
                     f"Hessian spectrum: {config.dataset}, {config.model}, "
                     f"{config.resolved_spec().name or 'spec'}")
    examples = sum(int(y.shape[0]) for _, y in batches)
    if args.json:
        out = {name: est.as_dict() for name, est in results.items()}
        if "density" in out:
            out["density"]["plot"] = str(plot_path)
        print(json.dumps({"checkpoint": args.checkpoint, "examples": examples,
                          "measures": out}))
        return 0
    print(f"{args.checkpoint}: {config.dataset}, {config.model}, "
          f"{config.resolved_spec().name or 'spec'}, {examples} training examples, eval mode")
    print(f"{'measure':<12} {'value':>14} {'± stderr':>12} {'probes':>7}")
    for name, est in results.items():
        print(f"{name:<12} {est.value:>14.6g} {est.stderr:>12.3g} {est.probes:>7}")
        if "eigenvalues" in est.extra and len(est.extra["eigenvalues"]) > 1:
            print(f"{'':<12} eigenvalues: " + ", ".join(f"{v:.6g}" for v in
                                                          est.extra["eigenvalues"]))
        if "moments" in est.extra:
            print(f"{'':<12} moments tr(H^k)/d: " + ", ".join(
                f"k={m['k']}: {m['value']:.4g}±{m['stderr']:.2g}" for m in est.extra["moments"]))
    if plot_path:
        print(f"density plot: {plot_path}")
    return 0
