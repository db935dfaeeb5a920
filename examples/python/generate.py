#!/usr/bin/env python3
"""Real text through the C ABI from Python: SmolLM2-135M made into a DSA model (our distilled indexers),
tokenized with its tokenizer, prefill + greedy decode with an IndexCache plan, the generated text, and the
SDK's Prometheus metrics.

    python3 examples/python/generate.py [--model models/smollm2-135m-dsa] [--plan 1/4|FSSF...|dsa]
                                        [--prompt TEXT] [--max-new 32] [--device auto|cpu|cuda]

Needs: the library (bash tools/build.sh), the model (bash tools/real_model/prepare.sh, then `bash
tools/demo.sh` assembles models/smollm2-135m-dsa; the test command's real test assembles
build/real_model/dsa — pass --model build/real_model/dsa), and the `tokenizers` package (the venv
tools/real_model/prepare.sh makes: .deps/real_model_venv/bin/python). Prompts shorter than index_topk (256)
attend to every key: the plan then changes the work, not the result.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bindings_c", "python"))

import indexcache as ic  # noqa: E402

PROMPT = ("The Python tutorial is a good place to start. It introduces the reader informally to the basic "
          "concepts and features of the Python language and system. A list is")


def plan_string(plan: str, layers: int) -> str:
    """dsa, 1/r (uniform: layer i Full iff i mod r == 0, DESIGN.md §3) or an F/S string."""
    if plan == "dsa":
        return "F" * layers
    if plan.startswith("1/"):
        r = int(plan[2:])
        return "".join("F" if i % r == 0 else "S" for i in range(layers))
    return plan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "smollm2-135m-dsa"))
    ap.add_argument("--plan", default=None, help="dsa, 1/2, 1/4, 1/8 or an F/S string (default: the searched 1/4 "
                    "plan in tools/real_model/plans/)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args(argv)
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("generate.py: the 'tokenizers' package is missing: run with .deps/real_model_venv/bin/python "
              "(bash tools/real_model/prepare.sh makes it) or pip install tokenizers", file=sys.stderr)
        return 2
    tok_path = os.path.join(args.model, "tokenizer.json")
    if not os.path.isfile(tok_path):
        print(f"generate.py: {tok_path} not found: prepare the real model first (bash tools/real_model/prepare.sh; "
              "bash tools/demo.sh assembles models/smollm2-135m-dsa)", file=sys.stderr)
        return 2
    tokenizer = Tokenizer.from_file(tok_path)
    device = {"auto": ic.Device.AUTO, "cpu": ic.Device.CPU, "cuda": ic.Device.CUDA}[args.device]
    with ic.Model.load(args.model) as model:
        layers = model.info.num_layers
        if args.plan is None:
            with open(os.path.join(ROOT, "tools", "real_model", "plans", "searched-1_4.txt")) as f:
                plan = f.read().strip()
        else:
            plan = plan_string(args.plan, layers)
        with open(os.path.join(args.model, "config.json")) as f:
            eos = json.load(f).get("eos_token_id")
        prompt = tokenizer.encode(args.prompt).ids
        with ic.Context(model, device=device, plan=plan, max_tokens=len(prompt) + args.max_new + 64) as ctx:
            seq = ctx.add_sequence()
            logits = ctx.prefill(seq, prompt)
            out = []
            for _ in range(args.max_new):
                nxt = max(range(len(logits)), key=logits.__getitem__)
                if nxt == eos:
                    break
                out.append(nxt)
                logits = ctx.decode(seq, nxt)
            if model.info.has_indexer:
                how = f"plan {plan} ({plan.count('F')} of {layers} layers run their indexer)"
            else:
                how = "dense attention (the model has no indexer: plans change nothing)"
            print(f"model {args.model} on {ctx.device.name.lower()}, {how}")
            print(f"prompt ({len(prompt)} tokens): {args.prompt}")
            print(f"generated ({len(out)} tokens): {tokenizer.decode(out)}")
            print("\nmetrics:")
            for line in ctx.metrics_text().splitlines():
                if line.startswith("indexcache_") and ("indexer" in line or "tokens" in line):
                    print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
