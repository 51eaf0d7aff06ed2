"""Training benchmark: `ragtune train` vs a plain PEFT + transformers Trainer loop, side by side,
and the demo behaviour score, base model vs adapter.

    .venv/bin/python -m bench.training [--quick]

Both sides train the same LoRA (same rank, alpha, dropout, target modules, learning rate,
schedule, batch, precision, seed) on the same examples of examples/house-style/train.jsonl for
one epoch, each in its own process (so peak RSS is that run's), alternating A B B A to spread the
drift of a shared machine. Tokens/s = the examples' tokens (padding excluded) / the Trainer's
train_runtime; the baseline is the usual recipe: tokenize with the chat template, mask the
prompt, pad per batch with DataCollatorForSeq2Seq, `Trainer(bf16=True)`.
The behaviour score runs the held-out prompts through the base and the demo adapter
(adapters/house-style; trained with DEMO_TRAIN when missing, except in --quick).
Writes bench/results/training.json and training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.machine import cpu_model, mem_gib

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "house-style" / "train.jsonl"
HELDOUT = REPO / "examples" / "house-style" / "heldout.jsonl"
BASE = REPO / "models" / "smollm2-135m-instruct"
RESULTS = REPO / "bench" / "results"
DEMO_TRAIN = (
    "ragtune train --data examples/house-style/train.jsonl --name house-style "
    "--epochs 2 --lr 1e-3 --rank 16 --alpha 32 --batch-size 8 --max-seq-len 512 --eval-split 0.05 --overwrite"
)
SETTINGS = dict(
    rank=16, alpha=32, dropout=0.05, lr=2e-4, batch_size=8, grad_accum=1, epochs=1.0, max_seq_len=512, seed=0
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return rows[:n]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_ragtune(n: int, workdir: Path) -> dict:
    from ragtune.training.settings import TrainingSettings
    from ragtune.training.train import train

    data = workdir / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in load_rows(n)))
    settings = TrainingSettings(**SETTINGS, target_modules=TARGETS, eval_split=0.0, save_steps=10_000)
    started = time.time()
    adapters = workdir / "adapters"
    dest = train(data, "bench", base_model=BASE, adapters_dir=adapters, settings=settings, progress=False)
    wall = time.time() - started
    m = json.loads((dest / "ragtune-adapter.json").read_text())["train_metrics"]
    return {
        "tokens": m["tokens"],
        "train_runtime_s": m["train_runtime_s"],
        "tokens_per_second": m["tokens_per_second"],
        "train_loss": m["train_loss"],
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def worker_baseline(n: int, workdir: Path) -> dict:
    """The plain recipe, written the way its documentation shows it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    started = time.time()
    torch.manual_seed(SETTINGS["seed"])
    tok = AutoTokenizer.from_pretrained(BASE)

    def ids(messages: list[dict], gen: bool) -> list[int]:
        out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    encoded = []
    for row in load_rows(n):
        messages = row["messages"]
        prompt, full = ids(messages[:-1], True), ids(messages, False)
        full = full[: SETTINGS["max_seq_len"]]
        labels = ([-100] * len(prompt) + full[len(prompt) :])[: len(full)]
        encoded.append({"input_ids": full, "attention_mask": [1] * len(full), "labels": labels})
    model = AutoModelForCausalLM.from_pretrained(BASE)  # transformers 5 default dtype: the config's (bf16)
    model = get_peft_model(
        model,
        LoraConfig(
            r=SETTINGS["rank"],
            lora_alpha=SETTINGS["alpha"],
            lora_dropout=SETTINGS["dropout"],
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=SETTINGS["batch_size"],
        gradient_accumulation_steps=SETTINGS["grad_accum"],
        learning_rate=SETTINGS["lr"],
        num_train_epochs=SETTINGS["epochs"],
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        bf16=True,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SETTINGS["seed"],
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(encoded),
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
    )
    result = trainer.train()
    model.save_pretrained(workdir / "out" / "adapter")
    tokens = sum(len(e["input_ids"]) for e in encoded)
    runtime = result.metrics["train_runtime"]
    return {
        "tokens": tokens,
        "train_runtime_s": round(runtime, 2),
        "tokens_per_second": round(tokens * SETTINGS["epochs"] / runtime, 1),
        "train_loss": result.training_loss,
        "wall_s": round(time.time() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_worker(side: str, n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.training", "--worker", side, "--examples", str(n)]
        cmd += ["--json", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{side} run failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def machine() -> dict:
    import peft
    import torch
    import transformers

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "mem_gib": mem_gib(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def behaviour(adapter: Path, limit: int | None) -> dict:
    from ragtune.evaluation.behaviour import eval_behaviour

    started = time.time()
    res = eval_behaviour(HELDOUT, base_model=BASE, adapter=adapter, limit=limit)
    res["seconds"] = round(time.time() - started, 1)
    return res


def score_adapter(args: argparse.Namespace) -> dict:
    """Behaviour base vs adapter; trains the demo adapter first when it is missing (not in --quick)."""
    adapter = REPO / "adapters" / args.adapter
    adapter_train = None
    if not adapter.is_dir() and not args.quick and args.adapter == "house-style":
        print(f"training the demo adapter: {DEMO_TRAIN}", flush=True)
        started = time.time()
        subprocess.run([sys.executable, "-m", "ragtune", *DEMO_TRAIN.split()[1:]], cwd=REPO, check=True)
        adapter_train = {"wall_s": round(time.time() - started, 1)}
    if not adapter.is_dir():
        return {"note": f"adapters/{args.adapter} does not exist; train it with `{DEMO_TRAIN}`"}
    print(f"scoring base vs {adapter.name} on the held-out prompts ...", flush=True)
    b = behaviour(adapter, limit=12 if args.quick else None)
    manifest = json.loads((adapter / "ragtune-adapter.json").read_text())
    b["adapter_train"] = adapter_train or {"wall_s": manifest["train_metrics"].get("wall_s")}
    b["adapter_manifest_metrics"] = {"train": manifest["train_metrics"], "eval": manifest["eval_metrics"]}
    return b


def write_report(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    s, m, w = report["summary"], report["machine"], report["workload"]
    lines = [
        "# Training benchmark",
        "",
        f"`{report['command']}` on {report['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}. "
        f"Load average {report['load_avg_start']} at start, {report['load_avg_end']} at end "
        "(the machine is shared: absolute figures move with the other work, the A B B A order is "
        "there to keep the comparison fair).",
        "",
        f"Workload: {w['examples']} house-style examples ({w['tokens']} tokens, "
        f"{w['label_share']:.0%} of them assistant tokens carrying loss), 1 epoch, LoRA r={SETTINGS['rank']} "
        f"alpha={SETTINGS['alpha']} on all 7 linear projections, batch {SETTINGS['batch_size']}, "
        f"{w['precision']}, {report['repeats']} run(s) per side.",
        "",
        "| | tokens/s (median) | runs | peak RSS MB | train loss | wall s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for side in ("ragtune", "baseline"):
        runs = report["runs"][side]
        lines.append(
            f"| {'`ragtune train`' if side == 'ragtune' else 'plain PEFT + Trainer'} | "
            f"{s[side]['tokens_per_second']:.1f} | {', '.join(str(r['tokens_per_second']) for r in runs)} | "
            f"{s[side]['peak_rss_mb']:.0f} | {s[side]['train_loss']:.3f} | {s[side]['wall_s']:.1f} |"
        )
    lines += [
        "",
        f"Throughput ratio ragtune / baseline: **{s['speedup']:.2f}x** (target >= 1.0x); "
        f"peak memory ratio: {s['memory_ratio']:.2f}x.",
        "",
    ]
    b = report.get("behaviour")
    if b and "adapter" in b:
        keys = list(b["base"].keys())
        lines += [
            f"## Behaviour on {b['examples']} held-out prompts (examples/house-style, greedy)",
            "",
            f"Adapter trained with `{DEMO_TRAIN}` "
            f"({b.get('adapter_train', {}).get('wall_s', '?')} s wall on this machine).",
            "",
            "| model | " + " | ".join(keys) + " |",
            "|---|" + "---:|" * len(keys),
            "| base | " + " | ".join(f"{b['base'][k]:.3f}" for k in keys) + " |",
            "| + house-style adapter | " + " | ".join(f"{b['adapter'][k]:.3f}" for k in keys) + " |",
            "",
            "behaviour: the house format (cites an existing source as [n], ends with the closing line) "
            "or the exact refusal; citation: the right source cited; fact: the answer's fact present.",
        ]
    elif b:
        lines += ["## Behaviour", "", b.get("note", "")]
    if report.get("notes"):
        lines += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples, one run per side")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--adapter", default="house-style", help="adapter under adapters/ to score")
    parser.add_argument("--no-behaviour", action="store_true", help="measure throughput only")
    parser.add_argument(
        "--behaviour-only", action="store_true", help="rescore behaviour into the existing training.json"
    )
    parser.add_argument("--worker", choices=["ragtune", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.worker:
        with tempfile.TemporaryDirectory(prefix="bench-work-") as tmp:
            fn = worker_ragtune if args.worker == "ragtune" else worker_baseline
            args.json.write_text(json.dumps(fn(args.examples, Path(tmp))))
        return

    if args.behaviour_only:
        report = json.loads((RESULTS / "training.json").read_text())
        report["behaviour"] = score_adapter(args)
        report["behaviour_command"] = "python -m bench.training --behaviour-only"
        write_report(report)
        print((RESULTS / "training.md").read_text())
        return

    n = args.examples or (32 if args.quick else 48)
    repeats = args.repeats or (1 if args.quick else 2)
    command = " ".join(["python -m bench.training", *sys.argv[1:]])
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    load_start = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {"ragtune": [], "baseline": []}
    order = ["ragtune", "baseline", "baseline", "ragtune"] * ((repeats + 1) // 2)
    counts = {"ragtune": 0, "baseline": 0}
    for side in order:
        if counts[side] >= repeats:
            continue
        counts[side] += 1
        print(f"{side} run {counts[side]}/{repeats} on {n} examples ...", flush=True)
        runs[side].append(run_worker(side, n))
        print(f"  {runs[side][-1]}", flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    summary = {
        side: {k: med(side, k) for k in ("tokens_per_second", "peak_rss_mb", "train_loss", "wall_s")}
        for side in runs
    }
    summary["speedup"] = summary["ragtune"]["tokens_per_second"] / summary["baseline"]["tokens_per_second"]
    summary["memory_ratio"] = summary["ragtune"]["peak_rss_mb"] / summary["baseline"]["peak_rss_mb"]

    from transformers import AutoTokenizer

    from ragtune.training.data import load_examples, tokenize_examples
    from ragtune.training.train import pick_hardware

    tok = AutoTokenizer.from_pretrained(BASE)
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "d.jsonl"
        sample.write_text("".join(json.dumps(r) + "\n" for r in load_rows(n)))
        ts = tokenize_examples(tok, load_examples(sample)[0], max_seq_len=SETTINGS["max_seq_len"])
    workload = {
        "examples": n,
        "tokens": ts.tokens,
        "label_share": ts.label_tokens / ts.tokens,
        "precision": pick_hardware("auto").precision,
    }

    b = {"note": "not measured (--no-behaviour)"} if args.no_behaviour else score_adapter(args)

    report = {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_avg_start": round(load_start, 2),
        "load_avg_end": round(os.getloadavg()[0], 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "settings": SETTINGS,
        "target_modules": TARGETS,
        "workload": workload,
        "repeats": repeats,
        "runs": runs,
        "summary": summary,
        "behaviour": b,
    }
    write_report(report)
    print((RESULTS / "training.md").read_text())
    shutil.rmtree(REPO / "adapters" / ".runs" / "bench", ignore_errors=True)


if __name__ == "__main__":
    main()
