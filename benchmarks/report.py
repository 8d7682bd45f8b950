"""Renders `docs/RESULTS.md` from the committed result files (never typed by hand):
`benchmarks/results/efficiency.json`, `accuracy.json`, `two_stage.json`, `mpo_share.json` and `sasrec_beauty.json`,
each figure with the command, machine, date and budget recorded in its JSON, and the targets of `docs/design.md`
marked as met or missed. Its first table, the headline, is also the README's results table (`headline`).

    python -m benchmarks.report              # writes docs/RESULTS.md
    python -m benchmarks.report --headline   # prints only the headline table, for the README
    python -m benchmarks.report --check      # exits 1 if docs/RESULTS.md differs from what the results render
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speeder_hf.metrics import RANKING_METRICS, mcnemar_test

from .arguments import parse_arguments

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "docs" / "RESULTS.md"
STYLE_ORDER = ("speeder", "llara", "text", "mllm")
METRICS = RANKING_METRICS
# Each variant of the full model, and the part of it that the variant lacks.
ABLATIONS = {
    "prior": "adding the LLM and the content prior to SASRec",
    "priors": "the LLM",
    "speeder_no_prior": "adding the priors to the LLM",
    "speeder_no_gate": "the MRC gate",
    "speeder_no_spae": "SPAE",
    "speeder_no_mpo": "MPO's curriculum",
    "speeder_text_only": "the other modalities",
}
# Table rows in this order whatever order the `--resume` runs added them in.
METHOD_ORDER = ("sasrec", "prior", "priors", "speeder", "speeder_no_prior", "speeder_no_mpo", "speeder_no_spae")
METHOD_ORDER += ("speeder_no_gate", "speeder_text_only")
METHOD_ORDER += ("llara", "llara_constrained", "text", "text_constrained", "mllm", "mllm_constrained")
# The efficiency targets (docs/design.md, "Targets"): speeder / llara prompt tokens at most, training and inference
# throughput ratios at least.
TOKEN_TARGET, TRAIN_TARGET, INFER_TARGET = 0.25, 3.0, 5.0
# The baselines on the uncut backbone, and Speeder beside them at equal training samples and at equal training time:
# each an accuracy run of its own, in these folders of the results directory.
FULL_BACKBONE_RUNS = {
    "full_backbone": "equal samples",
    "full_backbone_512": "equal samples, 512",
    "full_backbone_943": "equal samples, 943",
    "full_backbone_equal_time": "equal training time",
    "full_backbone_mllm": "equal samples, 32",
    "full_backbone_beauty": "equal samples, 256",
}
TITLE_BASELINES = ("llara", "text", "mllm")
FULL_BACKBONE_METRICS = ("VHR@1", "ValidRatio", "HR@5", "NDCG@10", "MRR")


def dataset_names(results: dict[str, Any]) -> list[str]:
    """The datasets of an `accuracy.json` (its entries with a training budget), in the file's order."""
    return [key for key, value in results.items() if isinstance(value, dict) and "budget" in value]


def _fmt(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _provenance(result: dict[str, Any]) -> list[str]:
    machine = result["machine"]
    return [
        f"- command: `{result['command']}`",
        f"- machine: {machine['device']}, {machine['cpu_cores']} CPU cores, torch {machine['torch']}, transformers "
        f"{machine['transformers']} (1-min load average at start {machine['load_average_1min_at_start']}); code at "
        f"commit {machine.get('git_commit_at_start')}",
        f"- date: {result['date']}; backbone: {result['backbone']}",
    ]


def _wall_and_runs(result: dict[str, Any], key: str) -> list[str]:
    """The wall time, and when a `--resume` run added rows to earlier ones, which command produced which rows
    (listed under `key` in each of the result's `runs`). A row a later run produced again is listed under that run
    only, and a run whose rows all were produced again is not listed."""
    runs, owned = [], set()
    for run in reversed(result.get("runs", [])):
        rows = [row for row in run.get(key, []) if row not in owned]
        owned.update(rows)
        if rows or not run.get(key):
            runs.insert(0, {**run, key: rows})
    last = " (of the last run)" if len(runs) > 1 else ""
    lines = [f"- wall time{last}: {result['wall_seconds'] / 60:.1f} min"]
    if len(runs) > 1:
        lines.append("- the rows come from several runs of the script:")
        for run in runs:
            commit = f" at commit {run['git_commit_at_start']}" if run.get("git_commit_at_start") else ""
            wall = f", {run['wall_seconds'] / 60:.1f} min" if "wall_seconds" in run else ""
            lines.append(
                f"  - `{run['command']}` ({run['date']}{commit}{wall}): {', '.join(run[key]) or 'nothing new'}"
            )
    return lines


def efficiency_section(result: dict[str, Any], image: str) -> list[str]:
    settings = result["settings"]
    lines = [
        "## Efficiency",
        "",
        *_provenance(result),
        f"- budget: {settings['num_candidates']} candidates; training batch {settings['train_batch_size']}, "
        f"{settings['warmup_steps']} warm-up + {settings['timed_steps']} timed steps, LoRA r={settings['lora']['r']}, "
        f"{settings['precision']}; inference: {settings['infer_samples']} timed samples in batches of "
        f"{settings['infer_batch_size']}; prompt tokens averaged over {settings['token_samples']} samples",
        *_wall_and_runs(result, "configurations"),
        "",
        f"![efficiency]({image})",
        "",
    ]
    for dataset, entry in result["by_dataset"].items():
        headline = " (headline)" if dataset == result["headline_dataset"] else ""
        lines += [
            f"**{dataset}{headline}** ({entry['items']} items)"
            + "".join(f"; {style} skipped: {why}" for style, why in entry["skipped"].items()),
            "",
            "| history | style | prompt tokens | train samples/s | inference samples/s | peak memory, MiB (training "
            "rise) | answer |",
            "|---:|---|---:|---:|---:|---:|---|",
        ]
        for length, styles in sorted(entry["by_history_len"].items(), key=lambda kv: int(kv[0])):
            for style in [s for s in STYLE_ORDER if s in styles]:
                v = styles[style]
                if "error" in v:
                    lines.append(f"| {length} | {style} | {v['error']} | | | | |")
                    continue
                lines.append(
                    f"| {length} | {style} | {v['prompt_tokens']:.0f} | {v['train_samples_per_s']:.3f} | "
                    f"{v['infer_samples_per_s']:.3f} | {v['peak_mem_mb']:.0f} ({v['train_mem_rise_mb']:.0f}) | "
                    f"{v['answer']} |"
                )
        lines.append("")
        for reference in ("llara", "mllm"):
            table = entry[f"ratios_vs_{reference}"]
            if not table:
                continue
            wanted = (
                f"[targets](design.md#targets): tokens <= {TOKEN_TARGET}, training >= {TRAIN_TARGET}x, inference >= "
                f"{INFER_TARGET}x"
                if reference == "llara"
                else "the ratios should exceed those against llara"
            )
            lines += [
                f"speeder vs {reference} ({wanted}):",
                "",
                "| history | prompt tokens | training throughput | inference throughput | peak memory |",
                "|---:|---:|---:|---:|---:|",
            ]
            for length, r in sorted(table.items(), key=lambda kv: int(kv[0])):
                cells = [f"x{r['prompt_tokens']:.3f}", f"x{r['train_throughput']:.2f}", f"x{r['infer_throughput']:.2f}"]
                if reference == "llara":
                    checks = (
                        r["prompt_tokens"] <= TOKEN_TARGET,
                        r["train_throughput"] >= TRAIN_TARGET,
                        r["infer_throughput"] >= INFER_TARGET,
                    )
                    cells = [f"{c} ({_mark(ok)})" for c, ok in zip(cells, checks)]
                lines.append(f"| {length} | " + " | ".join(cells) + f" | x{r['peak_mem']:.2f} |")
            lines.append("")
    return lines


def accuracy_section(result: dict[str, Any], image: str) -> list[str]:
    lines = ["## Accuracy", "", *_provenance(result)]
    if "wall_seconds" in result:
        lines += _wall_and_runs(result, "methods")
    lines += ["", f"![accuracy]({image})", ""]
    datasets = dataset_names(result)
    for dataset in datasets:
        entry = result[dataset]
        budget, data = entry["budget"], entry["data"]
        lines += [
            f"**{dataset}**: {data['test_users']} {data.get('eval_split', 'test')} users, {data['split']}; "
            f"{data['candidates']}; histories of up to {data['max_history_len']} items.",
            f"Budget: {budget['train_samples']} training samples x {budget['epochs']} epoch, batch "
            f"{budget['batch_size']} ({budget['optimizer_steps']} optimizer steps), LoRA r={budget['lora']['r']}; "
            f"{budget['note']}.",
            "",
            "| method | " + " | ".join(METRICS) + " | train s |",
            "|---|" + "---:|" * (len(METRICS) + 1),
        ]
        known = [m for m in METHOD_ORDER if m in entry["methods"]]
        methods = {m: entry["methods"][m] for m in known + [m for m in entry["methods"] if m not in known]}
        for name, metrics in methods.items():
            seconds = metrics.get("train_seconds")
            lines.append(
                f"| {name} | " + " | ".join(_fmt(metrics.get(k)) for k in METRICS) + f" | {_fmt(seconds, 0)} |"
            )
        for name, reason in entry.get("skipped", {}).items():
            lines.append(f"| {name} | skipped: {reason} |" + " |" * len(METRICS))
        lines += ["", *accuracy_targets(methods), *curve_lines(methods), *answer_examples(methods)]
        lines.append("")
    lines.append(
        "Title-answer methods (llara, text, mllm) generate one answer (LLaRA's parser), so they have no ranking "
        "metrics (–). SASRec ranks all candidates: its VHR@1 is its HR@1."
    )
    return lines


def accuracy_targets(methods: dict[str, dict]) -> list[str]:
    """Target checks, each ablation's gap to the full model with its paired test on the same users."""
    if "speeder" not in methods:
        return ["- targets: speeder was not run."]
    full = methods["speeder"]["VHR@1"]
    lines = []
    # The target: at least each LLM baseline, and strictly above SASRec, the model Speeder reads.
    for other, label, strict in (("llara", "llara VHR@1", False), ("sasrec", "SASRec HR@1", True)):
        if other in methods:
            value, valid = methods[other]["VHR@1"], methods[other].get("ValidRatio", 1.0)
            # a title-answer baseline that seldom names a candidate loses by default, which the line should say
            caveat = f" (its ValidRatio is only {valid:.4f})" if valid < 0.5 else ""
            paired = methods["speeder"].get(f"paired_vs_{other}")
            if paired:
                caveat += f" (exact McNemar test on the same {paired['n']} users: {_p(paired['p_value'])})"
            met, sign = (full > value, ">") if strict else (full >= value, ">=")
            lines.append(f"- speeder VHR@1 {full:.4f} {sign} {label} {value:.4f}: {_mark(met)}{caveat}")
    for ablation, part in ABLATIONS.items():
        if ablation in methods:
            value, paired = methods[ablation]["VHR@1"], methods[ablation].get("paired_vs_speeder")
            verdict = paired_verdict(paired, part) if paired else untested_verdict(full - value)
            lines.append(f"- {ablation}: VHR@1 {value:.4f}, {verdict}")
    return lines


def _p(value: float) -> str:
    return "p < 1e-12" if value < 1e-12 else f"p = {value:.2g}"


def paired_verdict(paired: dict[str, Any], part: str) -> str:
    """How a variant, which lacks `part`, compares with the full model on the same users (`paired_vs_speeder`:
    variant - full)."""
    gap, p = -paired["difference"], paired["p_value"]
    test = f"exact McNemar test on {paired['n']} users: {_p(p)}"
    if gap > 0 and p < 0.05:
        return f"below the full model by {gap:.4f}: {part} helps (significant; {test})"
    if gap > 0:
        return f"below the full model by {gap:.4f}, within the noise: no measurable gain from {part} ({test})"
    return f"**not below the full model** (by {-gap:.4f}): no gain from {part} here ({test})"


def curve_lines(methods: dict[str, dict]) -> list[str]:
    """The speeder row's learning curve on validation users, and when it first passed SASRec."""
    curve = methods.get("speeder", {}).get("learning_curve")
    if not curve:
        return []
    points = ", ".join(f"{p['train_samples']}: {p['VHR@1']:.3f}" for p in curve["points"])
    passed = curve["time_to_sasrec_s"]
    if passed is None:
        when = "**never above it** during training"
    elif curve["samples_to_sasrec"] == 0:
        when = "above it before any training (the untrained LLM adds nothing: the priors alone)"
    else:
        when = f"first above it after {passed:.0f} s of training ({curve['samples_to_sasrec']} samples)"
    return [
        f"- learning curve (validation VHR@1 of {curve['validation_users']} users by training samples; SASRec "
        f"{curve['sasrec_validation_HR@1']:.3f}): {points}; {when} (`time_to_sasrec_s`)"
    ]


def two_stage_section(result: dict[str, Any]) -> list[str]:
    """SASRec retrieves, Speeder reranks: full-catalog ranking against SASRec's own (`benchmarks.two_stage`)."""
    lines = ["## Two-stage recommendation over the whole catalog", ""]
    for dataset, entry in result.items():
        sasrec, two = entry["sasrec"], entry["two_stage"]
        lines += [
            f"**{dataset}**: {entry['protocol']}; {entry['n_users']} users; retriever recall@{entry['retrieved']} "
            f"{entry['retriever_recall']:.4f}.",
            f"- command: `{entry['command']}`; machine: {entry['machine']['device']}; date: {entry['date']}",
            "",
            "| ranking | HR@1 | HR@5 | HR@10 | NDCG@5 | NDCG@10 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in (("SASRec, full catalog", sasrec), ("SASRec top K, Speeder rerank", two)):
            lines.append(
                f"| {name} | " + " | ".join(_fmt(row[k]) for k in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")) + " |"
            )
        ok = two["NDCG@10"] >= sasrec["NDCG@10"]
        lines += ["", f"- two-stage NDCG@10 {two['NDCG@10']:.4f} >= SASRec's {sasrec['NDCG@10']:.4f}: {_mark(ok)}"]
        fusion = entry.get("retrieved_fusion")
        if fusion:
            weights = ", ".join(f"{name} {value:.3g}" for name, value in fusion.items() if name != "fitted_on")
            lines.append(
                f"- retrieved candidates scored with weights fitted on {fusion['fitted_on']} validation users whose "
                f"target SASRec retrieved: {weights}"
            )
        lines.append("")
    return lines


def answer_examples(methods: dict[str, dict], shown: int = 3, width: int = 60) -> list[str]:
    """What each title-answer method generated for the first test users, so a low ValidRatio can be read."""

    def quote(text: str) -> str:
        text = " ".join(text.split()).replace("`", "'")
        return f"`{text[:width]}{'...' if len(text) > width else ''}`"

    lines = []
    for name, metrics in methods.items():
        if metrics.get("examples"):
            answers = [f"{quote(e['generated'])} (target {quote(e['target_title'])})" for e in metrics["examples"]]
            lines.append(f"- {name}'s first answers: " + "; ".join(answers[:shown]))
    return lines


def untested_verdict(gap: float) -> str:
    """A variant's gap to the full model where no per-user hits were saved to test it on."""
    where = f"below the full model by {gap:.4f}" if gap > 0 else f"**not below the full model** (by {-gap:.4f})"
    return f"{where}; no per-user hits were saved with this row, so it has no paired test"


def mpo_share_section(result: dict[str, Any], image: str) -> list[str]:
    """MPO's sample split compared on validation users (`benchmarks.mpo_share`), each variant against the
    first one (MPO's equal split), with the exact McNemar test on the same users where the run saved per-user hits
    (`paired_vs_first_variant`)."""
    lines = ["## MPO's sample split, on validation users", "", f"- question: {result['question']}"]
    lines += [*_provenance(result), f"- wall time: {result['wall_seconds'] / 60:.1f} min", "", f"![mpo_share]({image})"]
    for dataset, entry in result["datasets"].items():
        budget, data, variants = entry["budget"], entry["data"], entry["variants"]
        lines += [
            "",
            f"**{dataset}**: {data['test_users']} validation users, {data['candidates']}; budget: "
            f"{budget['train_samples']} training samples x {budget['epochs']} epoch, batch {budget['batch_size']}.",
            "",
            "| variant | samples per stage | VHR@1 | HR@5 | NDCG@5 | NDCG@10 | train s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, v in variants.items():
            split = " / ".join(str(n) for n in v["train_samples_per_stage"])
            metrics = " | ".join(_fmt(v[k]) for k in ("VHR@1", "HR@5", "NDCG@5", "NDCG@10"))
            lines.append(f"| {name} | {split} | {metrics} | {_fmt(v['train_seconds'], 0)} |")
        (reference, base), *others = variants.items()
        lines.append("")
        for name, v in others:
            gap, paired = v["VHR@1"] - base["VHR@1"], v.get("paired_vs_first_variant")
            if paired:
                verdict = "significant" if paired["p_value"] < 0.05 else "within the noise"
                test = f"{verdict}: exact McNemar test on the same {paired['n']} users, {_p(paired['p_value'])}"
            else:
                # Runs from before mpo_share saved each user's hit have no pairing to test.
                test = "untested: these results hold no per-user hits, so no paired test"
            lines.append(f"- {name} - {reference}: VHR@1 {gap:+.4f} ({test})")
    return lines + [""]


def sasrec_section(result: dict[str, Any]) -> list[str]:
    """SASRec on full Beauty (`benchmarks.sasrec_beauty`): the collaborative baseline and the `id` features."""
    machine, full, cands = result["machine"], result["full_ranking"], result["candidates_20"]
    # (older files recorded `platform` and `cpu_threads`; newer ones the benchmarks' machine description)
    platform = f" ({machine['platform']})" if "platform" in machine else ""
    threads = machine.get("torch_threads", machine.get("cpu_threads"))
    published = result["published_sasrec"]
    return [
        "## SASRec on Amazon Beauty",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {machine['device']}{platform}, {machine.get('cpu_cores', '?')} CPU cores, {threads} torch "
        f"threads, torch {machine['torch']}",
        f"- budget: {result['settings']['loss']} loss, {result['settings']['num_epochs']} epochs at most (best "
        f"{result['best_epoch']}); {result['wall_seconds'] / 60:.1f} min end to end",
        f"- data: {result['dataset']['name']}, {result['protocol']['test_users']} test users, leave-one-out",
        "",
        "| protocol | HR@1 | HR@5 | NDCG@5 | HR@10 | NDCG@10 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| full ranking (history 50) | | | | {_fmt(full['HR@10'])} | {_fmt(full['NDCG@10'])} |",
        f"| published SASRec ({published['source']}) | | | | {_fmt(published['full_HR@10'])} | "
        f"{_fmt(published['full_NDCG@10'])} |",
        f"| 20 candidates (history 20) | {_fmt(cands['HR@1'])} | {_fmt(cands['HR@5'])} | {_fmt(cands['NDCG@5'])} | | |",
        "",
    ]


def full_backbone_runs(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The `accuracy.json` of each `FULL_BACKBONE_RUNS` folder that has one, in that order."""
    return {
        folder: json.loads((results_dir / folder / "accuracy.json").read_text())
        for folder in FULL_BACKBONE_RUNS
        if (results_dir / folder / "accuracy.json").is_file()
    }


def full_backbone_section(results_dir: Path) -> list[str]:
    """The title-answer baselines on the uncut backbone, with their constrained twins, beside Speeder on the same
    backbone at equal training samples and at equal training time (each a run in a `FULL_BACKBONE_RUNS` folder, on
    the first test users of one seeded order), with each row's cost: training seconds and evaluated rows per second."""
    runs = full_backbone_runs(results_dir)
    if not runs:
        return []
    hits = {
        folder: json.loads(path.read_text()) if (path := results_dir / folder / "accuracy_hits.json").is_file() else {}
        for folder in runs
    }
    lines = ["## Baselines at the full backbone", ""]
    for folder, result in runs.items():
        lines += [f"**{FULL_BACKBONE_RUNS[folder]}** (`{folder}/accuracy.json`):", *_provenance(result), ""]
    datasets = dict.fromkeys(name for result in runs.values() for name in dataset_names(result))
    for dataset in datasets:
        first = next(r for r in runs.values() if dataset in r)  # the dataset's first run sets its users and llara
        data = first[dataset]["data"]
        lines += [
            f"**{dataset}**: {data['test_users']} test users unless a budget names fewer, {data['candidates']}.",
            "",
            "| method | budget | " + " | ".join(FULL_BACKBONE_METRICS) + " | validation ValidRatio | training "
            "samples | train s | eval rows/s | paired test vs llara (same run, else equal samples) |",
            "|---|---|" + "---:|" * (len(FULL_BACKBONE_METRICS) + 5),
        ]
        for folder, result in runs.items():
            methods = result.get(dataset, {}).get("methods", {})
            # Against the llara of the same run, else the equal-samples run's (the one an equal-time run is timed to).
            reference = (hits[folder].get(dataset) or {}).get("llara") or (
                hits.get("full_backbone", {}).get(dataset, {}).get("llara")
            )
            known = [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]
            budget = FULL_BACKBONE_RUNS[folder]
            if known and (users := result[dataset]["data"]["test_users"]) != data["test_users"]:
                budget += f" ({users} users)"
            for name in known:
                row = methods[name]
                saved = hits[folder].get(dataset, {}).get(name)
                paired = "–"
                if reference and saved and name != "llara" and saved["rows"] == reference["rows"]:
                    test = mcnemar_test([c == "1" for c in saved["hits"]], [c == "1" for c in reference["hits"]])
                    paired = _p(test["p_value"])
                rate = row["num_samples"] / row["eval_seconds"] if row.get("eval_seconds") else None
                lines.append(
                    f"| {name} | {budget} | "
                    + " | ".join(_fmt(row.get(k)) for k in FULL_BACKBONE_METRICS)
                    + f" | {_fmt(row.get('validation', {}).get('ValidRatio'))} | {row.get('train_samples_seen', '–')} "
                    f"| {_fmt(row.get('train_seconds'), 0)} | {_fmt(rate, 2)} | {paired} |"
                )
        lines.append("")
        for name in TITLE_BASELINES:  # does the budget let the free answers name a candidate? (saturation)
            points = [
                (row["train_samples_seen"], row["validation"])
                for result in runs.values()
                if "validation" in (row := result.get(dataset, {}).get("methods", {}).get(name, {}))
            ]
            if len(points) > 1:
                curve = ", ".join(f"{samples}: {_fmt(v['ValidRatio'], 3)}" for samples, v in sorted(points))
                users = points[0][1]["users"]
                lines += [f"{name}'s validation ValidRatio ({users} users) by training samples: {curve}.", ""]
        llara = first[dataset]["methods"].get("llara", {})
        timed = runs.get("full_backbone_equal_time", {}).get(dataset, {}).get("methods", {}).get("speeder", {})
        if llara.get("train_seconds") and timed.get("train_seconds", math.inf) < llara["train_seconds"]:
            lines += [
                f"At equal training time Speeder ran out of data before time: its {timed['train_samples_seen']} "
                f"training samples (one per user) took {timed['train_seconds']:.0f} s, llara's "
                f"{llara['train_samples_seen']} took {llara['train_seconds']:.0f} s.",
                "",
            ]
    lines += textwrap.wrap(
        "A `_constrained` row is the same trained model as the row above it, its answers restricted by a prefix trie "
        "to the candidates' titles (so every answer is valid) and the candidates ranked by title log-likelihood. "
        "The validation ValidRatio is that of the free answers on validation users, after training.",
        width=120,
    ) + [""]
    return lines


def llara_split_section(result: dict[str, Any]) -> list[str]:
    """Speeder and its SASRec on LLaRA's own MovieLens test windows, beside LLaRA's published figure."""
    speeder, sasrec, paired = result["speeder"], result["SASRec"], result["speeder_vs_sasrec"]
    published = result["llara_published"]
    split = result["split"]
    lines = [
        "## LLaRA's own MovieLens split",
        "",
        f"`{result['command']}`, on {result['machine']['device']}, {result['date']}; the model trained by "
        f"`{result['speeder_command']}` ({result['speeder_train_seconds']:.0f} s of training).",
        "",
        "| method | VHR@1 | HR@5 | NDCG@10 | test users |",
        "|---|---:|---:|---:|---:|",
        f"| Speeder | {_fmt(speeder['VHR@1'])} | {_fmt(speeder['HR@5'])} | {_fmt(speeder['NDCG@10'])} | "
        f"{speeder['num_samples']} |",
        f"| SASRec (paired test vs Speeder: {_p(paired['p_value'])}) | {_fmt(sasrec['VHR@1'])} | "
        f"{_fmt(sasrec['HR@5'])} | {_fmt(sasrec['NDCG@10'])} | {sasrec['num_samples']} |",
        f"| LLaRA, published ({published['backbone']}, {published['source']}) | {_fmt(published['VHR@1'])} | – | – | "
        f"{published['num_samples']} |",
        "",
    ]
    lines += textwrap.wrap(
        f"LLaRA's validation ({split['validation_users']}) and test ({split['test_users']}) windows, each matched to "
        f"the one MovieLens-100K user whose ratings hold it; those users are held out, and the other "
        f"{split['training_users']} users train with their whole history (LLaRA slides windows of ten over the same "
        "users; its training windows are not published without a pickle). Candidates: the target and 19 items "
        "outside the window, drawn once by seed (LLaRA draws them anew on each read). With 95 users one hit rate "
        f"near 0.45 has a standard error of {result['standard_error_at_0.45']}: a gap to LLaRA's figure under "
        "about 0.1 is noise, and LLaRA's figure was measured on its own draw of candidates.",
        width=120,
    )
    gap = published["VHR@1"] - speeder["VHR@1"]
    layers = result["speeder_arguments"].get("llm_layers")
    verdict = (
        f"Speeder ({result['speeder_arguments']['llm']}, {f'first {layers} layers' if layers else 'all layers'}) "
        f"is {abs(gap):.2f} {'below' if gap > 0 else 'above'} LLaRA's published figure: "
        + ("more than the noise." if abs(gap) > 2 * result["standard_error_at_0.45"] else "within the noise.")
    )
    return lines + ["", verdict, ""]


def headline(results_dir: Path = RESULTS_DIR, page_dir: Path = REPO) -> list[str]:
    """The headline table (the README's results table): per accuracy dataset, Speeder against the SASRec it reads on
    the same test users and candidates, its two parts apart (the priors without the LLM, the LLM without the
    priors), and the efficiency ratios against the LLaRA-style prompt at history 10 where the efficiency benchmark
    measured that dataset. Its links are relative to `page_dir`, the folder of the page it goes into."""
    accuracy_path, efficiency_path = results_dir / "accuracy.json", results_dir / "efficiency.json"
    if not accuracy_path.is_file():
        return ["Not produced yet: run `python -m benchmarks.accuracy`."]
    accuracy = json.loads(accuracy_path.read_text())
    efficiency = json.loads(efficiency_path.read_text()) if efficiency_path.is_file() else {"by_dataset": {}}
    lines = [
        "| dataset | test users | training samples | Speeder VHR@1 | SASRec HR@1 (paired test) | the priors alone "
        "(paired test) | the LLM alone | prompt tokens vs LLaRA | training / inference speed vs LLaRA |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    datasets = dataset_names(accuracy)
    for dataset in datasets:
        entry = accuracy[dataset]
        methods = entry["methods"]
        speeder, sasrec = methods.get("speeder", {}), methods.get("sasrec", {})
        paired = speeder.get("paired_vs_sasrec")
        versus = _fmt(sasrec.get("VHR@1")) + (f" ({_p(paired['p_value'])})" if paired else "")
        alone = _fmt(methods.get("speeder_no_prior", {}).get("VHR@1"))
        priors = methods.get("priors", {})
        priors_paired = priors.get("paired_vs_speeder")
        no_llm = _fmt(priors.get("VHR@1")) + (f" ({_p(priors_paired['p_value'])})" if priors_paired else "")
        ratios = efficiency["by_dataset"].get(dataset, {}).get("ratios_vs_llara", {}).get("10")
        tokens = f"x{ratios['prompt_tokens']:.2f}" if ratios else "–"
        speed = f"x{ratios['train_throughput']:.1f} / x{ratios['infer_throughput']:.1f}" if ratios else "–"
        lines.append(
            f"| {dataset} | {entry['data']['test_users']} | {entry['budget']['train_samples']} | "
            f"{_fmt(speeder.get('VHR@1'))} | {versus} | {no_llm} | {alone} | {tokens} | {speed} |"
        )
    if datasets:
        first = accuracy[datasets[0]]
        caption = (
            f"Leave-one-out test users, {first['data']['candidates'].split(' (')[0]} candidates each (the target and "
            f"uniformly drawn negatives, fixed by seed), the same for every method. {accuracy['backbone']}; one epoch, "
            f"batch {first['budget']['batch_size']}, LoRA r={first['budget']['lora']['r']}; measured on a "
            f"{accuracy['machine']['device']}, the last run on {accuracy['date']}."
        )
        if efficiency.get("backbone"):
            caption += (
                f" Efficiency: {efficiency['backbone']}, histories of 10 items, measured on {efficiency['date']}."
            )
        lines += ["", *textwrap.wrap(caption, width=120, break_on_hyphens=False)]
    return lines + baselines_headline(results_dir, page_dir)


def baselines_headline(results_dir: Path, page_dir: Path) -> list[str]:
    """Speeder against the title-answer baselines on the uncut backbone, per run of `FULL_BACKBONE_RUNS`: accuracy
    beside training cost, and each baseline's answers constrained to the candidates' titles."""
    runs = full_backbone_runs(results_dir)
    if not runs:
        return []
    lines = [
        "",
        "| dataset, uncut backbone | method | budget | training samples | train s | VHR@1 | ValidRatio | constrained "
        "VHR@1 / HR@5 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for folder, result in runs.items():
        page = Path(os.path.relpath(results_dir / folder / "accuracy.md", page_dir)).as_posix()
        budget = f"[{FULL_BACKBONE_RUNS[folder]}]({page})"
        for dataset in dataset_names(result):
            methods = result[dataset]["methods"]
            for name in [m for m in (*TITLE_BASELINES, "speeder") if m in methods]:
                row, twin = methods[name], methods.get(f"{name}_constrained", {})
                constrained = f"{_fmt(twin['VHR@1'])} / {_fmt(twin.get('HR@5'))}" if twin else "–"
                lines.append(
                    f"| {dataset} ({result[dataset]['data']['test_users']} users) | {name} | "
                    f"{budget} | {row.get('train_samples_seen', '–')} | "
                    f"{_fmt(row.get('train_seconds'), 0)} | {_fmt(row['VHR@1'])} | {_fmt(row.get('ValidRatio'))} | "
                    f"{constrained} |"
                )
    first = next(iter(runs.values()))
    results_page = Path(os.path.relpath(RESULTS_MD, page_dir)).as_posix()
    caption = (
        f"{first['backbone']}, measured on a {first['machine']['device']}; the first test users of one seeded order in "
        f"every run. Each budget links to its run's command and settings; all runs: [docs/RESULTS.md]({results_page})."
    )
    return lines + ["", *textwrap.wrap(caption, width=120, break_on_hyphens=False)]


def render(results_dir: Path, output: Path) -> str:
    """The markdown page; image links are relative to `output`'s folder."""
    shown = results_dir.relative_to(REPO) if results_dir.is_relative_to(REPO) else results_dir
    lines = [
        "# Results",
        "",
        f"*Generated by `python -m benchmarks.report` from `{shown}/*.json`; do not edit by hand.* How each figure is "
        "measured, and why: [design.md](design.md). The accuracy recipe: [accuracy-recipe.md](accuracy-recipe.md).",
        "",
        "## Headline",
        "",
        *headline(results_dir, output.parent),
        "",
    ]
    for name, section in (("efficiency", efficiency_section), ("accuracy", accuracy_section)):
        path = results_dir / f"{name}.json"
        if not path.is_file():
            lines += [f"## {name.capitalize()}", "", f"Not produced yet: run `python -m benchmarks.{name}`.", ""]
            continue
        image = os.path.relpath(results_dir / f"{name}.png", output.parent)
        lines += section(json.loads(path.read_text()), image) + [""]
    lines += full_backbone_section(results_dir)
    if (results_dir / "two_stage.json").is_file():
        lines += two_stage_section(json.loads((results_dir / "two_stage.json").read_text()))
    if (results_dir / "mpo_share.json").is_file():
        image = os.path.relpath(results_dir / "mpo_share.png", output.parent)
        lines += mpo_share_section(json.loads((results_dir / "mpo_share.json").read_text()), image)
    if (results_dir / "sasrec_beauty.json").is_file():
        lines += sasrec_section(json.loads((results_dir / "sasrec_beauty.json").read_text()))
    if (results_dir / "llara_split.json").is_file():
        lines += llara_split_section(json.loads((results_dir / "llara_split.json").read_text()))
    return "\n".join(lines).rstrip("\n") + "\n"


@dataclass
class ReportArguments:
    """The flags of `python -m benchmarks.report`."""

    results_dir: Path = field(default=RESULTS_DIR, metadata={"help": "the result files"})
    out: Path = field(default=RESULTS_MD, metadata={"help": "the page written"})
    headline: bool = field(default=False, metadata={"help": "print only the headline table (the README's)"})
    check: bool = field(default=False, metadata={"help": "exit 1 if --out differs from the rendered page"})


def main(argv: Sequence[str] | None = None) -> str:
    args, _ = parse_arguments(ReportArguments, argv, __doc__.split("\n\n")[0])
    if args.headline:
        text = "\n".join(headline(args.results_dir.resolve())) + "\n"
        print(text, end="")
        return text
    page = render(args.results_dir.resolve(), args.out.resolve())
    if args.check:
        if not args.out.is_file() or args.out.read_text() != page:
            raise SystemExit(
                f"{args.out} differs from the results in {args.results_dir}: run `python -m benchmarks.report`."
            )
        print(f"{args.out} is up to date")
        return page
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return page


if __name__ == "__main__":
    main()
