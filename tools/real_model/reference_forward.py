#!/usr/bin/env python3
"""Independent numpy reference of the HF Llama forward pass, to cross-check the converted checkpoint and
the `indexcache` CLI (dense causal attention, float32).

    reference_forward.py --model models/smollm2-135m --token-file data/tokens/eval.tokens \
        [--context 1024] [--max-tokens 1024]          # LM loss / perplexity, windows like `indexcache eval`
    reference_forward.py --model models/smollm2-135m --prompt "What is the capital of France?" \
        [--max-new 30]                                # greedy generation with the chat template
    reference_forward.py --model models/smollm2-135m --tokens 1,2,3 [--max-new 30]

Loss is the mean next-token cross-entropy (natural log) over the predictions inside each window of
--context tokens (each window a fresh sequence, as `indexcache eval` does); perplexity = exp(loss).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from safetensors.numpy import load_file


class Llama:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = c = json.load(f)
        self.w = load_file(os.path.join(model_dir, "model.safetensors"))
        self.w = {k: v.astype(np.float32) for k, v in self.w.items()}
        self.L, self.H, self.KV = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
        self.D = c.get("head_dim") or c["hidden_size"] // self.H
        self.eps = c["rms_norm_eps"]
        self.lm_head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        inv = c["rope_theta"] ** (-np.arange(0, self.D, 2, dtype=np.float64) / self.D)
        self.inv_freq = inv

    def rms(self, x, w):
        return (x / np.sqrt(np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True) + self.eps)) * w

    def rope(self, x, pos):  # x [T, heads, D], NeoX / HF rotate_half layout
        ang = np.outer(pos, self.inv_freq)
        cos = np.cos(ang).astype(np.float32)[:, None, :]
        sin = np.sin(ang).astype(np.float32)[:, None, :]
        h = self.D // 2
        a, b = x[..., :h], x[..., h:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def forward(self, ids):
        """Logits [T, vocab] of a fresh sequence (no cache; fine for a few thousand tokens)."""
        T = len(ids)
        pos = np.arange(T)
        x = self.w["model.embed_tokens.weight"][np.asarray(ids)]
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        g = self.H // self.KV
        for l in range(self.L):
            p = f"model.layers.{l}."
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            q = (h @ self.w[p + "self_attn.q_proj.weight"].T).reshape(T, self.H, self.D)
            k = (h @ self.w[p + "self_attn.k_proj.weight"].T).reshape(T, self.KV, self.D)
            v = (h @ self.w[p + "self_attn.v_proj.weight"].T).reshape(T, self.KV, self.D)
            q, k = self.rope(q, pos), self.rope(k, pos)
            out = np.empty((T, self.H, self.D), dtype=np.float32)
            for hd in range(self.H):
                s = (q[:, hd] @ k[:, hd // g].T) / math.sqrt(self.D) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                s /= s.sum(-1, keepdims=True)
                out[:, hd] = s @ v[:, hd // g]
            x = x + out.reshape(T, -1) @ self.w[p + "self_attn.o_proj.weight"].T
            h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            a = h @ self.w[p + "mlp.gate_proj.weight"].T
            u = h @ self.w[p + "mlp.up_proj.weight"].T
            x = x + ((a / (1 + np.exp(-a))) * u) @ self.w[p + "mlp.down_proj.weight"].T
        x = self.rms(x, self.w["model.norm.weight"])
        return x @ self.lm_head.T


def window_loss(m, ids):
    logits = m.forward(ids[:-1]).astype(np.float64)
    mx = logits.max(-1, keepdims=True)
    lse = (mx[:, 0] + np.log(np.exp(logits - mx).sum(-1)))
    nll = lse - logits[np.arange(len(ids) - 1), ids[1:]]
    return float(nll.sum()), len(ids) - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--token-file")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--tokens", help="comma-separated prompt ids")
    ap.add_argument("--prompt", help="user message, wrapped in the SmolLM2 chat template")
    ap.add_argument("--max-new", type=int, default=30)
    args = ap.parse_args()
    m = Llama(args.model)
    t0 = time.time()
    if args.token_file:
        ids = np.fromfile(args.token_file, dtype="<u4").astype(np.int64)
        if args.max_tokens:
            ids = ids[: args.max_tokens]
        if ids.size and ids.max() >= m.cfg["vocab_size"]:
            sys.exit(f"reference_forward: token id {ids.max()} outside the vocabulary")
        tot, n = 0.0, 0
        for s in range(0, len(ids), args.context):
            w = ids[s: s + args.context]
            if len(w) < 2:
                continue
            a, b = window_loss(m, w)
            tot, n = tot + a, n + b
        loss = tot / n
        print(f"loss {loss:.5f} perplexity {math.exp(loss):.4f} predictions {n} "
              f"({time.time() - t0:.1f} s)")
        return
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    if args.prompt is not None:
        text = (f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                f"<|im_end|>\n<|im_start|>user\n{args.prompt}<|im_end|>\n<|im_start|>assistant\n")
        ids = tok.encode(text, add_special_tokens=False).ids
    else:
        ids = [int(x) for x in args.tokens.split(",")]
    print("prompt ids:", ",".join(map(str, ids)))
    new = []
    for _ in range(args.max_new):
        nxt = int(np.argmax(m.forward(ids + new)[-1]))
        new.append(nxt)
        if nxt == m.cfg["eos_token_id"]:
            break
    print("new ids:", ",".join(map(str, new)))
    print("text:", repr(tok.decode(new, skip_special_tokens=False)), f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
