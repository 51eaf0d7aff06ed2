"""Load an adapter in vLLM with its base and generate once without and once with it.

Run as a subprocess (`python -m ragtune.training.validate --adapter DIR --base DIR`) by
`ragtune adapters validate`: vLLM spawns worker processes, which needs the __main__ guard and
keeps the engine out of the caller's process. Prints one JSON line: base and adapter outputs,
whether they differ, and the load time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--prompt", default=None, help="user message to generate from")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    started = time.time()
    llm = LLM(
        model=args.base,
        enable_lora=True,
        max_lora_rank=args.max_lora_rank,
        max_model_len=2048,
        max_loras=1,
        max_num_seqs=4,
        seed=0,
    )
    load_s = time.time() - started
    messages = [{"role": "user", "content": args.prompt}] if args.prompt else PROMPT
    params = SamplingParams(temperature=0.0, max_tokens=48)
    base = llm.chat(messages, params, use_tqdm=False)[0].outputs[0].text
    lora = LoRARequest("adapter", 1, args.adapter)
    tuned = llm.chat(messages, params, lora_request=lora, use_tqdm=False)[0].outputs[0].text
    print(
        json.dumps({"base": base, "adapter": tuned, "differs": base != tuned, "load_s": load_s}), flush=True
    )


if __name__ == "__main__":
    main()
