"""``metasam train``: one training run, with a progress bar and a final summary."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from metasam.cli._options import add_dataclass_options, overrides


def register(sub: argparse._SubParsersAction) -> None:
    from metasam.training import TrainConfig

    parser = sub.add_parser(
        "train", help="one training run", description="Train once with a sharpness preset or "
        "spec, e.g. `metasam train --dataset digits --preset frob_sam --epochs 30`.")
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the fields "
                        "below; command-line options override it")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one "
                        "JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_options(parser, TrainConfig)
    parser.set_defaults(run=run)


def load_config(args: argparse.Namespace) -> Any:
    from metasam import _config
    from metasam.training import TrainConfig

    data: dict[str, Any] = {}
    source = None
    if args.config:
        loaded = _config.load_yaml(args.config) or {}
        if not isinstance(loaded, dict):
            from metasam.errors import ConfigError

            raise ConfigError("", "expected a mapping of fields", source=args.config)
        data.update(loaded)
        source = args.config
    data.update(overrides(args, TrainConfig))
    if isinstance(data.get("spec"), str) and data["spec"].lstrip().startswith("{"):
        try:
            data["spec"] = json.loads(data["spec"])
        except json.JSONDecodeError as err:
            from metasam.errors import ConfigError

            raise ConfigError("--spec", f"invalid JSON at column {err.colno}: {err.msg}",
                              "a spec as JSON text, a spec or optimizer JSON file, or a "
                              "preset name") from None
    return TrainConfig.from_dict(data, source=source)


def run(args: argparse.Namespace) -> int:
    from metasam.training import train
    from metasam.training.trainer import resolve_device

    config = load_config(args)
    resolve_device(config.device)  # a bad device fails here, before the progress bar
    bar = None

    def ready(trial: Any) -> None:  # the bar appears once the data are loaded
        nonlocal bar
        if args.quiet:
            return
        from tqdm import tqdm

        label = config.resolved_spec().name or "spec"
        bar = tqdm(total=config.epochs, initial=trial.epoch, desc=f"{config.dataset} {label}",
                   unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def report(metrics: dict[str, Any]) -> None:
        if bar is not None:
            bar.n = metrics["epoch"]
            bar.set_postfix(loss=f"{metrics['train_loss']:.4f}",
                            val_acc=f"{metrics.get('val_acc', float('nan')):.4f}")
            bar.refresh()

    from metasam.data import DatasetNotFoundError
    from metasam.errors import ConfigError

    try:
        result = train(config, report=report, ready=ready)
    except DatasetNotFoundError as err:  # the user's to fix: one line, not a bug report
        raise ConfigError("--dataset", str(err)) from None
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    else:
        print(summary(result))
    return 0 if result["status"] != "diverged" else 1


def summary(result: dict[str, Any]) -> str:
    lines = [f"{'status':<16} {result['status']}" + (f" ({result['reason']})" if result["reason"]
                                                     else "")]
    for key in ("epochs", "train_loss", "train_acc", "val_acc", "best_val_acc", "test_acc",
                "grad_evals", "passes_per_step", "wall_time"):
        if key in result:
            value = result[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"{key:<16} {text}")
    return "\n".join(lines)
