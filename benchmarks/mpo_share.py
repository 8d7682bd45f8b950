"""MPO's sample split on the validation users: does giving MPO's last stage (all modalities) most of the training
samples close the gap to training on all modalities from the first step (`speeder_no_mpo`)?

At the accuracy benchmark's budget, MPO splits the samples equally over its stages, so on MovieLens the strongest
modality (id) trains on the last quarter only, and `speeder_no_mpo` beat the full model on test. Choosing the split
on test would tune on it; this script compares the splits on the validation split instead (each user's
second-to-last item, the same candidates protocol), one `benchmarks.accuracy` run per variant under identical
settings, and writes `<out>/mpo_share.json` and `mpo_share.png`. Each variant keeps its users' top-1 hits, and
each later variant its exact McNemar test against the first on the same users (`paired_vs_first_variant`).
Arguments it does not know go to `benchmarks.accuracy` unchanged.

    python -m benchmarks.mpo_share --shares equal,0.8 -- --catalog_dir outputs/bench_catalogs --datasets movielens \\
        --llm_layers 6 --train_samples 2400 --batch_size 8 --learning_rate 1e-3 --align_learning_rate 1e-3
    python -m benchmarks.mpo_share --quick --out outputs/mpo_share_quick        # tiny model, synthetic data
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speeder_hf.json_files import write_json
from speeder_hf.metrics import mcnemar_test

from . import accuracy
from .arguments import parse_arguments, split_commas
from .bookkeeping import RESULTS_DIR, command_line, machine_description, setup_logging, today

REFERENCE = "speeder_no_mpo"
KEPT = ("VHR@1", "ValidRatio", "HR@1", "HR@5", "NDCG@5", "NDCG@10", "MRR", "num_samples", "train_samples_per_stage")
KEPT += ("train_seconds", "by_history_len")


@dataclass
class MPOShareArguments:
    """The flags of `python -m benchmarks.mpo_share`; the ones it does not know go to `benchmarks.accuracy`."""

    shares: list[str] = field(
        default_factory=lambda: ["equal", "0.8"], metadata={"help": "final-stage shares; 'equal' = MPO's equal split"}
    )
    out: Path = field(default=RESULTS_DIR, metadata={"help": "folder for mpo_share.json/.png"})
    work_dir: Path | None = field(default=None, metadata={"help": "per-variant runs (outputs/mpo_share_work)"})
    quick: bool = field(default=False, metadata={"help": "tiny random model and synthetic data (smoke test)"})

    def __post_init__(self) -> None:
        self.shares = split_commas(self.shares)
        for share in self.shares:
            if share != "equal" and not 0 < float(share) < 1:
                raise ValueError(f"--shares: {share!r} is neither 'equal' nor a share strictly between 0 and 1")


# Set per variant, so a forwarded one would be overridden (in either flag spelling).
RESERVED = ("methods", "out", "work_dir", "eval_split", "final_stage_share", "resume")


def parse_args(argv: list[str] | None) -> tuple[MPOShareArguments, list[str]]:
    args, forwarded = parse_arguments(MPOShareArguments, argv, __doc__.split("\n\n")[0], allow_unknown=True)
    forwarded = [a for a in forwarded if a != "--"]
    names = {a.split("=")[0][2:].replace("-", "_") for a in forwarded if a.startswith("--")}
    clash = sorted(names.intersection(RESERVED))
    if clash:
        raise SystemExit(f"mpo_share: {['--' + c for c in clash]} are set by this script per variant; leave them out")
    return args, forwarded


def variants(shares: list[str]) -> dict[str, list[str]]:
    """Variant name -> the `benchmarks.accuracy` arguments that make it."""
    runs = {}
    for share in shares:
        name = "speeder, equal stages" if share == "equal" else f"speeder, final stage {float(share):.0%}"
        runs[name] = ["--methods", "speeder"] + ([] if share == "equal" else ["--final_stage_share", share])
    runs[f"{REFERENCE} (one stage)"] = ["--methods", REFERENCE]
    return runs


def paired_tests(variants: dict[str, dict[str, Any]]) -> None:
    """Adds to each variant after the first its exact McNemar test on top-1 hits against the first one, when both
    were evaluated on the same users (`paired_vs_first_variant`: this variant - the first)."""
    (_, first), *others = variants.items()
    for _, variant in others:
        variant.pop("paired_vs_first_variant", None)
        if variant["rows"] != first["rows"]:
            continue  # other users: no pairing
        test = mcnemar_test([c == "1" for c in variant["hits"]], [c == "1" for c in first["hits"]])
        variant["paired_vs_first_variant"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in test.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup_logging()
    args, forwarded = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="speeder-mpo-share-"))
    work = args.work_dir or (scratch if args.quick else Path("outputs/mpo_share_work"))
    start = time.perf_counter()
    try:
        result = {
            "command": command_line(__spec__.name, argv),
            "machine": machine_description(),
            "date": today(),
            "eval_split": "validation",
            "question": __doc__.split("\n\n")[0].replace("\n", " "),
            "datasets": {},
        }
        for index, (name, extra) in enumerate(variants(args.shares).items()):
            folder = work / f"variant-{index}"
            run = accuracy.main(
                [*forwarded, *(["--quick"] if args.quick else []), *extra, "--eval_split", "validation"]
                + ["--out", str(folder), "--work_dir", str(folder / "train")]
            )
            result["backbone"] = run["backbone"]
            hits = json.loads((folder / accuracy.HITS_FILE).read_text())
            for dataset in accuracy.dataset_names(run):
                entry = run[dataset]
                target = result["datasets"].setdefault(
                    dataset, {"budget": entry["budget"], "data": entry["data"], "variants": {}}
                )
                for method, metrics in entry["methods"].items():
                    kept = {key: metrics[key] for key in KEPT}
                    # each user's top-1 hit and which users they are: what the paired test reads
                    saved = hits[dataset][method]
                    target["variants"][name] = {**kept, "accuracy_command": run["command"], **saved}
        for entry in result["datasets"].values():
            paired_tests(entry["variants"])
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        write_json(args.out / "mpo_share.json", result)
        plot(result, args.out / "mpo_share.png")
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def plot(result: dict[str, Any], path: Path) -> None:
    """VHR@1 per variant, one panel per dataset; above each later variant, its paired test's p-value against the
    first (a per-bar error bar would ignore that every variant ranks the same users)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = result["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, (dataset, entry) in zip(axes[0], datasets.items()):
        names = list(entry["variants"])
        rates = [entry["variants"][n]["VHR@1"] for n in names]
        ax.bar(range(len(names)), rates, color="tab:blue")
        for x, (name, rate) in enumerate(zip(names, rates)):
            paired = entry["variants"][name].get("paired_vs_first_variant")
            if paired:
                ax.annotate(f"p = {paired['p_value']:.2g}", (x, rate), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{dataset}: {entry['data']['test_users']} validation users")
        ax.set_ylabel("VHR@1")
    fig.suptitle(f"MPO sample split, {result['backbone']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
