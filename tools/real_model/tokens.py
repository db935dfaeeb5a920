#!/usr/bin/env python3
"""Text <-> token ids with the converted model's tokenizer.json, for the `indexcache run` CLI.

    tokens.py encode [--model DIR] [--chat] TEXT       prints comma-separated ids (for --tokens)
    tokens.py decode [--model DIR] IDS                 IDS comma-separated, or '-' to read the last line
                                                       of stdin (the output of `indexcache run`)

--chat wraps TEXT as one user turn in SmolLM2-Instruct's chat template (with its default system turn)
and ends with the assistant header, as the template's add_generation_prompt does.
"""

import argparse
import os
import sys

from tokenizers import Tokenizer

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat(text):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
            f"<|im_start|>assistant\n")


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("op", choices=("encode", "decode"))
    ap.add_argument("arg")
    ap.add_argument("--model", default=os.path.join(root, "models/smollm2-135m"))
    ap.add_argument("--chat", action="store_true")
    args = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    if args.op == "encode":
        text = chat(args.arg) if args.chat else args.arg
        print(",".join(map(str, tok.encode(text, add_special_tokens=False).ids)))
    else:
        s = args.arg
        if s == "-":
            lines = [l.strip() for l in sys.stdin.read().splitlines() if l.strip()]
            s = lines[-1] if lines else ""
        ids = [int(x) for x in s.replace(" ", "").split(",") if x]
        print(tok.decode(ids, skip_special_tokens=False))


if __name__ == "__main__":
    main()
