#!/usr/bin/env python3
"""Converts a llama.cpp GGUF of a Llama-architecture model (SmolLM2-135M-Instruct Q4_1) into an HF-style
checkpoint directory that the IndexCache SDK loads (dense mode, no indexers yet):

    config.json             LlamaForCausalLM, model_type llama, values from the GGUF metadata
    model.safetensors       every tensor dequantized to float32 (default) or bfloat16, HF tensor names
    tokenizer.json          byte-level BPE rebuilt from the GGUF tokenizer metadata (vocab + merges)
    tokenizer_config.json   special tokens and the chat template from the GGUF
    generation_config.json  bos/eos
    conversion.json         source GGUF sha256, package versions, what was done

usage: convert_gguf.py GGUF OUT_DIR [--dtype f32|bf16] [--expect-sha256 HEX] [--no-tokenizer]

What llama.cpp did that we undo: its convert_hf_to_gguf.py stores the rows of q_proj and k_proj
permuted so that its "normal" (GPT-J, interleaved-pair) RoPE equals HF's NeoX-style rotate_half RoPE.
Inside each head of d rows, HF row (half a, index i) -- i.e. row a*d/2 + i -- is stored at GGUF row
2*i + a. For k_proj the head count is the KV head count. The inverse used here reshapes the rows of
each head as [d/2, 2] and transposes them back to [2, d/2].
"""

import argparse
import hashlib
import json
import os
import re
import sys

import numpy as np

try:
    import gguf
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError:  # pragma: no cover
    sys.exit("convert_gguf: the 'gguf' package is missing: pip install -r tools/real_model/requirements.txt")


class ConvertError(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def field(reader, key, required=True, default=None):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ConvertError(f"GGUF metadata key '{key}' is missing")
        return default
    return f.contents()


def unpermute_rope_rows(w, n_heads):
    """Inverse of llama.cpp's permute(): GGUF rows [head, d/2, 2] -> HF rows [head, 2, d/2]."""
    rows = w.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ConvertError(f"cannot unpermute {w.shape} with {n_heads} heads")
    d = rows // n_heads
    return (w.reshape(n_heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def permute_rope_rows(w, n_heads):
    """llama.cpp's permute() (for the self-test only): HF rows [head, 2, d/2] -> GGUF rows [head, d/2, 2]."""
    d = w.shape[0] // n_heads
    return (w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(name):
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{int(m.group(1))}.{LAYER_NAMES[m.group(2)]}"
    return None


def read_config(reader):
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ConvertError(f"general.architecture is '{arch}', only 'llama' is supported")
    g = lambda k, **kw: field(reader, f"llama.{k}", **kw)  # noqa: E731
    hidden = int(g("embedding_length"))
    heads = int(g("attention.head_count"))
    kv_heads = int(g("attention.head_count_kv", required=False, default=heads))
    head_dim = int(g("attention.key_length", required=False, default=hidden // heads))
    rope_dim = int(g("rope.dimension_count", required=False, default=head_dim))
    if rope_dim != head_dim:
        raise ConvertError(f"partial RoPE (rope.dimension_count {rope_dim} != head_dim {head_dim}) unsupported")
    if field(reader, "llama.rope.scaling.type", required=False) not in (None, "none"):
        raise ConvertError("RoPE scaling in the GGUF is not supported by this converter")
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = int(g("vocab_size", required=False, default=len(tokens)))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(g("context_length")),
        # float32 metadata (9.999999747e-06) printed as the value it stands for
        "rms_norm_eps": float(np.format_float_positional(np.float32(g("attention.layer_norm_rms_epsilon")), unique=True)),
        "rope_theta": float(np.float32(g("rope.freq_base", required=False, default=10000.0))),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": vocab,
        "tie_word_embeddings": not has_output,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": field(reader, "tokenizer.ggml.padding_token_id", required=False),
        "torch_dtype": None,  # set by the caller
    }
    return cfg


def convert_tensors(reader, cfg, out_dtype):
    out = {}
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                raise ConvertError("rope_freqs.weight (llama3 RoPE scaling) is not supported")
            raise ConvertError(f"unexpected GGUF tensor '{t.name}'")
        expect = tuple(int(x) for x in reversed(t.shape))  # GGUF shapes are [cols, rows]
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            if w.shape != expect:
                w = w.reshape(expect)
        except Exception as e:
            raise ConvertError(f"cannot dequantize '{t.name}' ({t.tensor_type.name}, shape {expect}): {e} "
                               f"(truncated or corrupt GGUF?)") from e
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rope_rows(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rope_rows(w, kv_heads)
        if not np.all(np.isfinite(w)):
            raise ConvertError(f"tensor '{t.name}' has non-finite values after dequantization")
        out[name] = np.ascontiguousarray(w)
    check_shapes(out, cfg)
    if out_dtype == "bf16":
        out = {k: to_bf16(v) for k, v in out.items()}
    return out


def to_bf16(w):
    """float32 -> bfloat16 bit pattern (round to nearest even), stored as uint16 view for safetensors."""
    u = w.astype(np.float32).view(np.uint32)
    r = ((u >> 16) & 1) + 0x7FFF
    return ((u + r) >> 16).astype(np.uint16)


def check_shapes(t, cfg):
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    qd = cfg["num_attention_heads"] * cfg["head_dim"]
    kd = cfg["num_key_value_heads"] * cfg["head_dim"]
    want = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        want["lm_head.weight"] = (v, h)
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        want.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (qd, h), p + "self_attn.k_proj.weight": (kd, h),
            p + "self_attn.v_proj.weight": (kd, h), p + "self_attn.o_proj.weight": (h, qd),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        })
    missing = sorted(set(want) - set(t))
    extra = sorted(set(t) - set(want))
    if missing or extra:
        raise ConvertError(f"tensor set mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, s in want.items():
        if tuple(t[k].shape) != s:
            raise ConvertError(f"{k}: shape {tuple(t[k].shape)}, expected {s}")


def build_tokenizer(reader):
    """GPT2-style byte-level BPE from tokenizer.ggml.{tokens,merges,token_type}."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError:  # pragma: no cover
        raise ConvertError("the 'tokenizers' package is missing: pip install -r tools/real_model/requirements.txt")
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ConvertError(f"tokenizer.ggml.model is '{model}', only byte-level BPE ('gpt2') is supported")
    pre = field(reader, "tokenizer.ggml.pre", required=False, default="default")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges", required=False)
    if not merges:
        raise ConvertError("the GGUF has no tokenizer.ggml.merges: a BPE tokenizer cannot be rebuilt from "
                           "the vocabulary alone (merge ranks are not recoverable from token ids)")
    types = field(reader, "tokenizer.ggml.token_type", required=False, default=[1] * len(tokens))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConvertError("duplicate strings in tokenizer.ggml.tokens")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep or not a or not b:
            raise ConvertError(f"malformed merge {m!r}")
        pairs.append((a, b))
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        # llama.cpp's pre-tokenizer for these splits every digit, then applies the GPT-2 regex.
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt-2", "gpt2"):
        tk.pre_tokenizer = byte_level
    else:
        raise ConvertError(f"tokenizer.ggml.pre '{pre}' is not supported by this converter")
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # token_type 3 = CONTROL (special), 4 = USER_DEFINED
    specials = [AddedToken(tokens[i], special=(types[i] == 3), normalized=False)
                for i in range(len(tokens)) if types[i] in (3, 4)]
    tk.add_special_tokens([t for t in specials if t.special])
    tk.add_tokens([t for t in specials if not t.special])
    if tk.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ConvertError(f"rebuilt tokenizer has {tk.get_vocab_size(True)} tokens, GGUF has {len(tokens)}")
    for i in (0, 1, 2, len(tokens) - 1):
        if tk.token_to_id(tokens[i]) != i:
            raise ConvertError(f"token {tokens[i]!r} maps to {tk.token_to_id(tokens[i])}, expected {i}")
    return tk, [tokens[i] for i in range(len(tokens)) if types[i] == 3]


def self_test_permutation():
    rng = np.random.default_rng(0)
    for heads, d in ((9, 64), (3, 64), (2, 8)):
        w = rng.standard_normal((heads * d, 5)).astype(np.float32)
        assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, heads), heads), w)
        # NeoX RoPE on HF rows == interleaved (GPT-J) RoPE on GGUF rows, for one head and one position
        x = rng.standard_normal(5).astype(np.float64)
        hf = (w[:d] @ x)
        gg = (permute_rope_rows(w, heads)[:d] @ x)
        theta = 0.7 * 10000.0 ** (-np.arange(d // 2) * 2.0 / d)
        c, s = np.cos(theta), np.sin(theta)
        neox = np.concatenate([hf[: d // 2] * c - hf[d // 2:] * s, hf[d // 2:] * c + hf[: d // 2] * s])
        gj = np.empty(d)
        gj[0::2] = gg[0::2] * c - gg[1::2] * s
        gj[1::2] = gg[1::2] * c + gg[0::2] * s
        assert np.allclose(unpermute_rope_rows(gj[:, None], 1)[:, 0], neox), "RoPE layout self-test failed"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", help="path to the .gguf file")
    ap.add_argument("out", help="output directory (created; files in it are replaced)")
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="f32",
                    help="tensor dtype in model.safetensors (f32 keeps the dequantized values exactly)")
    ap.add_argument("--expect-sha256", default=None, help="refuse a GGUF whose sha256 differs")
    ap.add_argument("--no-tokenizer", action="store_true",
                    help="skip tokenizer.json (no 'tokenizers' package needed; e.g. on a GPU host without network)")
    args = ap.parse_args(argv)

    try:
        if not os.path.isfile(args.gguf):
            raise ConvertError(f"GGUF not found: {args.gguf} (run tools/real_model/fetch_smollm2.sh)")
        digest = sha256_file(args.gguf)
        if args.expect_sha256 and digest != args.expect_sha256.lower():
            raise ConvertError(f"GGUF sha256 {digest}, expected {args.expect_sha256} (corrupt file?)")
        try:
            reader = GGUFReader(args.gguf)
        except Exception as e:  # the gguf package raises ValueError/struct errors on a bad file
            raise ConvertError(f"cannot read {args.gguf} as GGUF (truncated or corrupt?): {e}") from e
        self_test_permutation()
        cfg = read_config(reader)
        cfg["torch_dtype"] = "float32" if args.dtype == "f32" else "bfloat16"
        tensors = convert_tensors(reader, cfg, args.dtype)
        tokenizer, special_tokens = (None, []) if args.no_tokenizer else build_tokenizer(reader)
    except ConvertError as e:
        print(f"convert_gguf: error: {e}", file=sys.stderr)
        return 1

    os.makedirs(args.out, exist_ok=True)
    st_path = os.path.join(args.out, "model.safetensors")
    write_safetensors_raw(st_path, tensors, "BF16" if args.dtype == "bf16" else "F32")
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    if tokenizer is not None:
        tokenizer.save(os.path.join(args.out, "tokenizer.json"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    tok_cfg = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": tokens[cfg["bos_token_id"]],
        "eos_token": tokens[cfg["eos_token_id"]],
        "unk_token": tokens[int(field(reader, "tokenizer.ggml.unknown_token_id", required=False, default=0))],
        "pad_token": tokens[cfg["pad_token_id"]] if cfg["pad_token_id"] is not None else None,
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", required=False, default=False)),
        "additional_special_tokens": special_tokens,
        "model_max_length": cfg["max_position_embeddings"],
        "chat_template": field(reader, "tokenizer.chat_template", required=False),
    }
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, f, indent=2)
        f.write("\n")
    from importlib.metadata import version
    info = {
        "source_gguf": os.path.basename(args.gguf),
        "source_gguf_sha256": digest,
        "gguf_name": field(reader, "general.name", required=False),
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
        "dtype": cfg["torch_dtype"],
        "steps": ["dequantize every tensor to float32 (gguf.quants.dequantize)",
                  "undo llama.cpp's q_proj/k_proj row permutation (per head [d/2,2] -> [2,d/2])",
                  "rename GGUF tensors to HF Llama names; tied embeddings: no lm_head",
                  "tokenizer.json: byte-level BPE from tokenizer.ggml.tokens/merges/token_type"],
        "packages": {p: version(p) for p in ("gguf", "numpy", "safetensors", "tokenizers")},
        "model_safetensors_sha256": sha256_file(st_path),
    }
    with open(os.path.join(args.out, "conversion.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    n_params = sum(int(np.prod(v.shape)) for v in tensors.values())
    print(f"convert_gguf: wrote {args.out}: {len(tensors)} tensors, {n_params:,} parameters, "
          f"{os.path.getsize(st_path):,} bytes ({cfg['torch_dtype']})", file=sys.stderr)
    return 0


def write_safetensors_raw(path, tensors, dtype_name):
    """Safetensors without the safetensors package: F32 little-endian, or BF16 given as uint16 bit patterns."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    names = sorted(tensors)
    for k in names:
        n = tensors[k].nbytes
        header[k] = {"dtype": dtype_name, "shape": list(tensors[k].shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for k in names:
            f.write(np.ascontiguousarray(tensors[k]).astype("<u2" if dtype_name == "BF16" else "<f4").tobytes())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
