"""Efficiency benchmark: prompt tokens, training and inference throughput and peak memory of each prompt style on the
same backbone, LoRA setup, batch size, samples and machine, at history lengths 10, 20 and 50 with 20 candidates. The
targets it is measured against are in docs/design.md ("Targets").

Styles (each with its own model and answer protocol, see `benchmarks.methods`):
`speeder` (one soft token per item + position token; the answer label is scored in one forward pass),
`llara` (title + ID token per item), `text` (full item text), `mllm` (title + 49 image-map tokens + ID token per
item; datasets with images only). The three title styles answer by greedy generation with LLaRA's settings
(`do_sample=False`, `num_beams=1`); the number of new tokens is fixed to the longest target title of the batch plus
eos, i.e. the cost of a trained model that stops right after its answer (LLaRA's cap is 64 new tokens).

Samples at history length L: users with at least L + 1 items, the L items before their last one as history, the
last as target, and 20 candidates (target + 19 uniform negatives outside the user's items). Batches are collated
before timing; timing covers forward, backward and the AdamW step (training: `--warmup_steps` untimed, then
`--timed_steps`), or scoring / generation (inference, LoRA merged, after one untimed single-sample batch). Time is
wall time on CUDA; on CPU it is the process's CPU time with one torch thread, because other jobs on a shared machine
inflate wall time (wall time is recorded too). Peak memory: CUDA `max_memory_allocated`; on CPU the peak resident
set size sampled during the timed phases (weights included). Every (dataset, style, history length) runs in its own
process, so memories and caches do not mix.

Writes `<out>/efficiency.json` and `<out>/efficiency.png` and prints speeder's ratios against `llara` and `mllm`.

    python -m benchmarks.efficiency --catalog_dir outputs/bench_catalogs --llm smollm2
    python -m benchmarks.efficiency --quick --out outputs/bench_quick      # tiny model, synthetic data, seconds
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speeder_hf.data import CandidateSampler, sample_rng
from speeder_hf.json_files import write_json
from speeder_hf.processing.collator import SpeederDataCollator
from speeder_hf.training.lora import apply_lora, merge_lora
from speeder_hf.training.mpo import set_trainable
from speeder_hf_train.arguments import job_field

from .arguments import parse_arguments, split_commas
from .bench_data import DEFAULT_CATALOG_DIR, BenchData, load_bench_data
from .bookkeeping import REPO, RESULTS_DIR, add_run, describe_backbone, machine_description, setup_logging, today
from .methods import METHODS, STYLE_METHODS, build_model, make_collator
from .quick import synthetic_data, write_tiny_backbone

logger = logging.getLogger("benchmarks.efficiency")

STYLES = ("speeder", "llara", "text", "mllm")
SAMPLE_STREAM = 7  # random stream of the benchmark's candidates (distinct from the split's)


@dataclass
class EfficiencyArguments:
    """The flags of `python -m benchmarks.efficiency`; the knobs it shares with the main job are the job's fields."""

    catalog_dir: Path = field(default=DEFAULT_CATALOG_DIR, metadata={"help": "prepare_catalogs output"})
    datasets: list[str] = field(
        default_factory=lambda: ["movielens", "beauty"], metadata={"help": "first = the headline dataset"}
    )
    styles: list[str] = field(default_factory=lambda: list(STYLES), metadata={"help": f"among {STYLES}"})
    history_lens: list[int] = field(default_factory=lambda: [10, 20, 50], metadata={"help": "space-separated"})
    llm: str = job_field("llm")
    out: Path = field(default=RESULTS_DIR, metadata={"help": "folder for efficiency.json/.png"})
    num_candidates: int = job_field("num_candidates")
    # One sample per step keeps the longest configuration (mllm, history 50: ~4300 tokens) near 10 GB on CPU.
    train_batch_size: int = field(default=1, metadata={"help": "samples per timed training step"})
    warmup_steps: int = field(default=1, metadata={"help": "untimed training steps first"})
    timed_steps: int = field(default=3, metadata={"help": "timed training steps"})
    infer_samples: int = field(default=4, metadata={"help": "timed inference samples"})
    infer_batch_size: int = field(default=2, metadata={"help": "inference batch"})
    token_samples: int = field(default=32, metadata={"help": "samples averaged for prompt tokens"})
    lora_r: int = job_field("lora_r")
    lora_alpha: int = job_field("lora_alpha")
    threads: int = field(default=1, metadata={"help": "torch CPU threads (CPU time is exact with one)"})
    seed: int = job_field("seed")
    in_process: bool = field(default=False, metadata={"help": "run every configuration in this process"})
    resume: bool = field(default=False, metadata={"help": "keep configurations already in <out>/efficiency.json"})
    quick: bool = field(default=False, metadata={"help": "tiny random model and synthetic data (smoke test)"})
    worker: str | None = field(default=None, metadata={"help": "internal: one configuration as JSON, measured here"})

    def __post_init__(self) -> None:
        self.datasets, self.styles = split_commas(self.datasets), split_commas(self.styles)
        unknown = [s for s in self.styles if s not in STYLES]
        if unknown:
            raise ValueError(f"unknown styles {unknown}; choose among {STYLES}")


def parse_args(argv: list[str] | None = None) -> EfficiencyArguments:
    return parse_arguments(EfficiencyArguments, argv, __doc__.split("\n\n")[0])[0]


# ----- one configuration -----------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory in MiB over a `with` block (`peak_mb`: CUDA allocations, or the sampled resident set size on
    CPU), and its rise over the memory held when the block started (`rise_mb`: what the phase itself needs)."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak_mb, self.start_mb, self._stop = cuda, 0.0, 0.0, threading.Event()

    def _rss_mb(self) -> float:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # no procfs: the process-wide peak is the best available
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.peak_mb = self.start_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    @property
    def rise_mb(self) -> float:
        return self.peak_mb - self.start_mb


def samples_at(data: BenchData, history_len: int, count: int, num_candidates: int, seed: int) -> list[dict]:
    """`count` samples whose history holds exactly `history_len` items (users cycled if too few)."""
    sequences = data.rec.sequences
    users = [(u, s) for u, s in zip(sequences["user_id"][:], sequences["items"][:]) if len(s) > history_len]
    if not users:
        raise ValueError(f"No user of {data.name!r} has more than {history_len} items.")
    order = np.random.default_rng(seed).permutation(len(users))
    sampler, user_items = CandidateSampler(data.rec.num_items, num_candidates), data.rec.user_items()
    rows = []
    for i in range(count):
        user, seq = users[order[i % len(users)]]
        candidates = sampler.sample(seq[-1], user_items[user], sample_rng(seed, SAMPLE_STREAM, user))
        rows.append(
            {"user_id": user, "history": seq[-history_len - 1 : -1], "target": seq[-1], "candidates": candidates}
        )
    return rows


def synchronize(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


class Clock:
    """Measured time from its creation: wall time on CUDA (after synchronising); on CPU this process's CPU time,
    which a shared, loaded machine does not inflate (with one torch thread no core spins waiting for another)."""

    def __init__(self, cuda: bool):
        self.cuda, self.wall, self.cpu = cuda, time.perf_counter(), time.process_time()

    def elapsed(self) -> dict[str, float | str]:
        synchronize(self.cuda)
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return {
            "measured": wall if self.cuda else cpu,
            "wall": wall,
            "clock": "wall time (CUDA synchronised)" if self.cuda else "process CPU time, 1 core",
        }


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Runs one (dataset, style, history length) configuration and returns its measurements."""
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    data = synthetic_data() if config["quick"] else load_bench_data(Path(config["catalog_dir"]) / config["dataset"])
    spec = METHODS[STYLE_METHODS[config["style"]]]
    model, tokenizer = build_model(spec, data, config["llm"], max(config["all_history_lens"]), config["num_candidates"])
    model.to(device)

    batch, warmup, timed = config["train_batch_size"], config["warmup_steps"], config["timed_steps"]
    infer_batch, infer_samples = config["infer_batch_size"], config["infer_samples"]
    needed = max(config["token_samples"], (warmup + timed) * batch + 1 + infer_samples)
    rows = samples_at(data, config["history_len"], needed, config["num_candidates"], config["seed"])
    eval_collator = make_collator(spec, model, tokenizer, data, mode="eval")
    prompt_lengths = [len(eval_collator.encode(row).input_ids) for row in rows[: config["token_samples"]]]

    # Training: LoRA plus the style's trainable item projectors, as in its last training stage.
    train_collator = make_collator(spec, model, tokenizer, data, mode="train")
    train_batches = [
        {k: v.to(device) for k, v in train_collator(rows[i * batch : (i + 1) * batch]).items()}
        for i in range(warmup + timed)
    ]
    model = apply_lora(model, r=config["lora_r"], alpha=config["lora_alpha"])
    set_trainable(model, spec.trains)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cuda)
    with PeakMemory(cuda) as train_memory:
        for step, inputs in enumerate(train_batches):
            if step == warmup:
                synchronize(cuda)
                train_start = Clock(cuda)
            with autocast:
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(cuda)
        train_time = train_start.elapsed()
    del optimizer, train_batches

    # Inference under the style's own protocol, on the merged model.
    model = merge_lora(model).eval()
    if cuda:
        model = model.to(torch.bfloat16)
    infer_rows = rows[(warmup + timed) * batch :]
    # One single-sample batch warms up, then the timed batches.
    timed_rows = infer_rows[1 : 1 + infer_samples]
    infer_batches = [infer_rows[:1], *(timed_rows[i : i + infer_batch] for i in range(0, infer_samples, infer_batch))]
    prepared = []
    for batch_rows in infer_batches:
        inputs = eval_collator(batch_rows)
        SpeederDataCollator.pop_metadata(inputs)
        # A trained title model stops after the target title and eos; a batch runs until its longest answer ends.
        answer = max(
            len(tokenizer(" " + data.catalog.titles[row["target"]], add_special_tokens=False)["input_ids"]) + 1
            for row in batch_rows
        )
        prepared.append(({k: v.to(device) for k, v in inputs.items()}, answer, len(batch_rows)))
    new_tokens = []
    with PeakMemory(cuda) as infer_memory, torch.no_grad():
        for index, (inputs, answer, size) in enumerate(prepared):
            if index == 1:  # the first batch warms up
                synchronize(cuda)
                infer_start = Clock(cuda)
            if spec.answer_mode == "index":
                model.score_candidates(num_candidates=config["num_candidates"], **inputs)
                continue
            model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                min_new_tokens=answer,
                max_new_tokens=answer,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            if index >= 1:
                new_tokens += [answer] * size
        synchronize(cuda)
        infer_time = infer_start.elapsed()

    return {
        "prompt_tokens": round(float(np.mean(prompt_lengths)), 1),
        "prompt_tokens_max": int(max(prompt_lengths)),
        "train_samples_per_s": round(timed * batch / train_time["measured"], 4),
        "infer_samples_per_s": round(infer_samples / infer_time["measured"], 4),
        "peak_mem_mb": round(max(train_memory.peak_mb, infer_memory.peak_mb), 1),
        "train_peak_mem_mb": round(train_memory.peak_mb, 1),
        "infer_peak_mem_mb": round(infer_memory.peak_mb, 1),
        "train_mem_rise_mb": round(train_memory.rise_mb, 1),
        "infer_mem_rise_mb": round(infer_memory.rise_mb, 1),
        "train_seconds": round(train_time["measured"], 2),
        "infer_seconds": round(infer_time["measured"], 2),
        "train_wall_seconds": round(train_time["wall"], 2),
        "infer_wall_seconds": round(infer_time["wall"], 2),
        "clock": train_time["clock"],
        "answer": "label scored in one forward pass"
        if spec.answer_mode == "index"
        else f"greedy generation of {np.mean(new_tokens):.1f} new tokens per sample (target title + eos)",
        "data": data.name,
    }


def run_config(config: dict[str, Any], in_process: bool, scratch: Path) -> dict[str, Any]:
    """Measures one configuration; a worker that dies (out of memory, say) is recorded as an error, not fatal."""
    if in_process:
        return measure(config)
    out = scratch / f"{config['dataset']}-{config['style']}-{config['history_len']}.json"
    # A fresh interpreter runs this module from the checkout whatever the current folder is.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", __spec__.name, "--worker", json.dumps({**config, "out": str(out)})]
    worker = subprocess.run(command, env=environment)
    if worker.returncode != 0:
        why = "killed (-9), most likely out of memory" if worker.returncode == -9 else f"exit code {worker.returncode}"
        return {"error": f"worker failed: {why}; see the log"}
    return json.loads(out.read_text())


# ----- the whole benchmark -------------------------------------------------------------------------------------
def ratios(by_len: dict[str, dict[str, dict]], reference: str) -> dict[str, dict[str, float]]:
    """speeder / reference for prompt tokens and peak memory, and for throughputs (higher = speeder faster)."""
    out = {}
    for length, styles in by_len.items():
        measured = {style: values for style, values in styles.items() if "error" not in values}
        if "speeder" in measured and reference in measured:
            s, r = styles["speeder"], styles[reference]
            out[length] = {
                "prompt_tokens": round(s["prompt_tokens"] / r["prompt_tokens"], 4),
                "train_throughput": round(s["train_samples_per_s"] / r["train_samples_per_s"], 3),
                "infer_throughput": round(s["infer_samples_per_s"] / r["infer_samples_per_s"], 3),
                "peak_mem": round(s["peak_mem_mb"] / r["peak_mem_mb"], 3),
            }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    setup_logging()
    args = parse_args(argv)
    if args.worker is not None:
        config = json.loads(args.worker)
        write_json(Path(config["out"]), measure(config))
        return None
    scratch = Path(tempfile.mkdtemp(prefix="speeder-efficiency-"))
    try:
        return run(args, scratch, argv)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: EfficiencyArguments, scratch: Path, argv: list[str] | None) -> dict[str, Any]:
    start = time.perf_counter()
    if args.quick:
        args.llm = str(write_tiny_backbone(scratch / "tiny-llm"))
        args.datasets, args.in_process, args.threads = ["synthetic"], True, 1
        args.token_samples = 8
    torch.set_num_threads(args.threads)
    settings = {
        "num_candidates": args.num_candidates,
        "history_lens": args.history_lens,
        "train_batch_size": args.train_batch_size,
        "warmup_steps": args.warmup_steps,
        "timed_steps": args.timed_steps,
        "infer_samples": args.infer_samples,
        "infer_batch_size": args.infer_batch_size,
        "token_samples": args.token_samples,
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "optimizer": "AdamW"},
        "precision": "bf16 autocast" if torch.cuda.is_available() else "float32",
        "torch_threads": args.threads,
    }
    out_json = args.out / "efficiency.json"
    previous = json.loads(out_json.read_text()) if args.resume and out_json.is_file() else {}
    if previous and previous.get("settings") != settings:
        raise SystemExit(f"--resume: {out_json} was made with other settings {previous.get('settings')}.")
    by_dataset: dict[str, Any] = {}
    for dataset in args.datasets:
        data = synthetic_data() if args.quick else load_bench_data(args.catalog_dir / dataset)
        styles = [s for s in args.styles if s != "mllm" or data.has_images]
        done = previous.get("by_dataset", {}).get(dataset, {}).get("by_history_len", {})
        by_dataset[dataset] = {
            "styles": styles,
            "skipped": {"mllm": "no item images"} if "mllm" in args.styles and "mllm" not in styles else {},
            "items": data.rec.num_items,
            "by_history_len": {str(n): dict(done.get(str(n), {})) for n in args.history_lens},
        }
    machine = machine_description()
    runs = previous.get("runs", [])
    this_run = add_run(runs, __spec__.name, argv, machine, key="configurations")
    results = {
        "machine": machine,
        "runs": runs,
        "command": this_run["command"],
        "date": today(),
        "backbone": "tiny random Llama (quick)" if args.quick else describe_backbone(args.llm),
        "headline_dataset": args.datasets[0],
        "settings": settings,
        "protocol": __doc__.split("\n\n")[1:3],
    }
    # History length first: a run stopped early still has every style at the shorter histories.
    for length in args.history_lens:
        for dataset, entry in by_dataset.items():
            for style in entry["styles"]:
                measured = entry["by_history_len"][str(length)]
                if style in measured and "error" not in measured[style]:
                    continue
                logger.info("%s, history %d, %s", dataset, length, style)
                config = {
                    **{k: v for k, v in vars(args).items() if k not in ("out", "catalog_dir", "worker", "datasets")},
                    "catalog_dir": str(args.catalog_dir),
                    "dataset": dataset,
                    "style": style,
                    "history_len": length,
                    "all_history_lens": args.history_lens,
                }
                measured[style] = run_config(config, args.in_process, scratch)
                this_run["configurations"].append(f"{dataset}/{length}/{style}")
                logger.info("%s", measured[style])
                finish(results, by_dataset, start, out_json, complete=False)
    finish(results, by_dataset, start, out_json, complete=True)
    plot(results, args.out / "efficiency.png")
    print_ratios(results)
    return results


def finish(results: dict[str, Any], by_dataset: dict[str, Any], start: float, out_json: Path, complete: bool) -> None:
    """Fills in the ratios and the headline keys and writes the JSON (after every configuration)."""
    for entry in by_dataset.values():
        entry["ratios_vs_llara"] = ratios(entry["by_history_len"], "llara")
        entry["ratios_vs_mllm"] = ratios(entry["by_history_len"], "mllm")
    headline = by_dataset[results["headline_dataset"]]
    results.update(
        {
            "by_history_len": headline["by_history_len"],
            "ratios_vs_llara": headline["ratios_vs_llara"],
            "ratios_vs_mllm": headline["ratios_vs_mllm"],
            "by_dataset": by_dataset,
            "complete": complete,
            "wall_seconds": round(time.perf_counter() - start, 1),
        }
    )
    results["runs"][-1]["wall_seconds"] = results["wall_seconds"]
    write_json(out_json, results)


def print_ratios(results: dict[str, Any]) -> None:
    for dataset, entry in results["by_dataset"].items():
        for reference in ("llara", "mllm"):
            for length, values in entry[f"ratios_vs_{reference}"].items():
                print(
                    f"{dataset} history {length}: speeder vs {reference}: "
                    f"prompt tokens x{values['prompt_tokens']:.3f}, "
                    f"training throughput x{values['train_throughput']:.2f}, "
                    f"inference throughput x{values['infer_throughput']:.2f}, "
                    f"peak memory x{values['peak_mem']:.2f}"
                )


def plot(results: dict[str, Any], path: Path) -> None:
    """Prompt tokens, training and inference throughput against history length, one line per style (solid:
    headline dataset, dashed: the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("prompt_tokens", "prompt tokens / sample"),
        ("train_samples_per_s", "training samples / s"),
        ("infer_samples_per_s", "inference samples / s"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = dict(zip(STYLES, ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    for dataset, entry in results["by_dataset"].items():
        lengths = sorted(entry["by_history_len"], key=int)
        for style in entry["styles"]:
            for ax, (key, _) in zip(axes, panels):
                values = [entry["by_history_len"][n].get(style, {}).get(key, np.nan) for n in lengths]
                ax.plot(
                    [int(n) for n in lengths],
                    values,
                    marker="o",
                    color=colors[style],
                    linestyle="-" if dataset == results["headline_dataset"] else "--",
                    label=f"{style} ({dataset})",
                )
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("history length (items)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Efficiency, {results['backbone']}, {results['machine']['device']}, {results['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
