#!/usr/bin/env python3
"""Builds the calibration and evaluation token sets from real long documents shipped in Debian packages.

    make_token_sets.py [--tokenizer models/smollm2-135m/tokenizer.json] [--out data/tokens]
                       [--calib-tokens 200000] [--eval-tokens 200000] [--code-fraction 0.5]
                       [--min-doc-tokens 4096] [--max-doc-tokens 16384] [--seed 0] [--cache DIR]

Sources (pinned versions; .debs fetched with `apt-get download` into the cache and unpacked with
`dpkg-deb -x`, so the system is not changed):
    prose  python3.11-doc   reST sources of the Python 3.11 documentation (html/_sources/**/*.rst.txt)
    prose  perl-doc         Perl 5.36 pod pages (perl/5.36.0/pod/*.pod)
    prose  linux-doc-6.1    Linux 6.1 kernel documentation (Documentation/**/*.rst.gz)
    code   golang-1.19-src  Go 1.19 standard library and toolchain sources (src/**/*.go, no testdata/,
                            no vendor/, no files marked "Code generated ... DO NOT EDIT")

Each document is one file, tokenized whole with the model's tokenizer.json (no BOS/EOS, no special
tokens; files containing a special token's text are skipped). Documents shorter than --min-doc-tokens
or longer than --max-doc-tokens are skipped. Candidates are ordered by a seeded hash of (source, path),
interleaved round-robin across the sources of a kind, and each accepted document goes to the split
(calibration or evaluation) furthest below its quota for that kind: the splits are disjoint by
document and each holds a similar mix. Output, rebuilt from scratch every run:

    OUT/calib.tokens, OUT/eval.tokens        little-endian uint32 token ids, documents concatenated
    OUT/calib.tokens.json, OUT/eval.tokens.json
        manifest: tokenizer sha256, seed, totals, and per document: offset, length (tokens), kind,
        source (package), version, deb_sha256, path (inside the package), sha256 (of the UTF-8 text)

The same arguments, package versions and tokenizer give byte-identical files.
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

try:
    from tokenizers import Tokenizer
except ImportError:  # pragma: no cover
    sys.exit("make_token_sets: the 'tokenizers' package is missing: pip install -r tools/real_model/requirements.txt")

SOURCES = [
    {"package": "python3.11-doc", "version": "3.11.2-6+deb12u9", "kind": "prose",
     "root": "usr/share/doc/python3.11/html/_sources", "include": r"\.rst\.txt$"},
    {"package": "perl-doc", "version": "5.36.0-7+deb12u4", "kind": "prose",
     "root": "usr/share/perl/5.36.0/pod", "include": r"\.pod$"},
    {"package": "linux-doc-6.1", "version": "6.1.192-3", "kind": "prose",
     "root": "usr/share/doc/linux-doc-6.1/Documentation", "include": r"\.rst(\.gz)?$"},
    {"package": "golang-1.19-src", "version": "1.19.8-2", "kind": "code",
     "root": "usr/share/go-1.19/src", "include": r"\.go$", "exclude": r"(^|/)(testdata|vendor)/",
     "skip_generated": True},
]
GENERATED = re.compile(r"^// Code generated .* DO NOT EDIT\.$", re.M)


class TokenSetError(Exception):
    pass


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg):
    print(f"make_token_sets: {msg}", file=sys.stderr, flush=True)


def fetch_deb(src, cache, any_version):
    """apt-get download PACKAGE=VERSION into cache/debs; unpack into cache/root/PACKAGE_VERSION."""
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    pkg, ver = src["package"], src["version"]

    def find():
        # apt-get download names files PACKAGE_VERSION_ARCH.deb with ':' in the version escaped as %3a
        pre = f"{pkg}_{ver.replace(':', '%3a')}_"
        hits = sorted(f for f in os.listdir(debs) if f.startswith(pre) and f.endswith(".deb"))
        return os.path.join(debs, hits[0]) if hits else None

    deb = find()
    if deb is None:
        log(f"apt-get download {pkg}={ver}")
        r = subprocess.run(["apt-get", "download", f"{pkg}={ver}"], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            if not any_version:
                raise TokenSetError(
                    f"apt-get download {pkg}={ver} failed: {r.stderr.strip().splitlines()[-1:]}\n"
                    f"  (run 'apt-get update' first; if the archive no longer has this version, rerun with "
                    f"--any-version: the manifest records the version used, but the token sets will differ)")
            log(f"{pkg}={ver} unavailable; --any-version: downloading the candidate version")
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            if r.returncode != 0:
                raise TokenSetError(f"apt-get download {pkg} failed: {r.stderr.strip()}")
            hits = sorted(f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb"))
            if not hits:
                raise TokenSetError(f"apt-get download {pkg} produced no .deb")
            deb = os.path.join(debs, hits[-1])
            ver = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            src = dict(src, version=ver)
        else:
            deb = find()
            if deb is None:
                raise TokenSetError(f"apt-get download {pkg}={ver} produced no .deb in {debs}")
    got = subprocess.run(["dpkg-deb", "-f", deb, "Package", "Version"], capture_output=True, text=True,
                         check=True).stdout
    if f"Package: {pkg}" not in got or f"Version: {src['version']}" not in got:
        raise TokenSetError(f"{deb} is not {pkg} {src['version']}: {got!r}")
    root = os.path.join(cache, "root", f"{pkg}_{src['version']}")
    stamp = os.path.join(root, ".unpacked")
    if not os.path.exists(stamp):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
        open(stamp, "w").close()
    return dict(src, deb=os.path.basename(deb), deb_sha256=sha256_file(deb), unpacked=root)


def list_documents(src):
    base = os.path.join(src["unpacked"], src["root"])
    if not os.path.isdir(base):
        raise TokenSetError(f"{src['package']}: {src['root']} not found in the package")
    inc = re.compile(src["include"])
    exc = re.compile(src["exclude"]) if src.get("exclude") else None
    out = []
    for d, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(d, f)
            rel = os.path.relpath(full, base)
            if os.path.islink(full) or not inc.search(rel) or (exc and exc.search(rel)):
                continue
            out.append("/" + os.path.join(src["root"], rel))
    return out


def read_text(src, path):
    """The document's text as UTF-8 bytes, or None when it is not UTF-8 or is generated code."""
    with open(os.path.join(src["unpacked"], path.lstrip("/")), "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    if src.get("skip_generated") and GENERATED.search(text[:4096]):
        return None, "generated"
    return text, None


def order_key(seed, pkg, path):
    return hashlib.sha256(f"{seed}\0{pkg}\0{path}".encode()).digest()


def interleave(lists):
    out, i = [], 0
    while any(i < len(l) for l in lists):
        out.extend(l[i] for l in lists if i < len(l))
        i += 1
    return out


def main(argv=None):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", default=os.path.join(root, "models/smollm2-135m/tokenizer.json"))
    ap.add_argument("--out", default=os.path.join(root, "data/tokens"))
    ap.add_argument("--cache", default=os.environ.get("INDEXCACHE_CACHE", os.path.join(root, ".deps/real_model")))
    ap.add_argument("--calib-tokens", type=int, default=200_000, help="target tokens of the calibration set")
    ap.add_argument("--eval-tokens", type=int, default=200_000, help="target tokens of the evaluation set")
    ap.add_argument("--code-fraction", type=float, default=0.5, help="share of each set taken from code")
    ap.add_argument("--min-doc-tokens", type=int, default=4096)
    ap.add_argument("--max-doc-tokens", type=int, default=16384, help="skip longer documents (0: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--any-version", action="store_true",
                    help="if a pinned package version is gone from the archive, use the current one")
    args = ap.parse_args(argv)

    try:
        if args.calib_tokens <= 0 or args.eval_tokens <= 0:
            raise TokenSetError("--calib-tokens and --eval-tokens must be positive")
        if not 0.0 <= args.code_fraction <= 1.0:
            raise TokenSetError(f"--code-fraction must be in [0, 1], got {args.code_fraction}")
        if not os.path.isfile(args.tokenizer):
            raise TokenSetError(f"tokenizer not found: {args.tokenizer} (run tools/real_model/convert_gguf.py)")
        tok = Tokenizer.from_file(args.tokenizer)
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        specials = [t for t, i in tok.get_vocab(with_added_tokens=True).items()
                    if t.startswith("<") and t.endswith(">") and tok.id_to_token(i) == t and i < 64]
        special_re = re.compile("|".join(re.escape(s) for s in specials)) if specials else None

        sources = [fetch_deb(s, args.cache, args.any_version) for s in SOURCES]
        splits = {"calib": args.calib_tokens, "eval": args.eval_tokens}
        kinds = {"prose": 1.0 - args.code_fraction, "code": args.code_fraction}
        quota = {(sp, k): int(round(n * f)) for sp, n in splits.items() for k, f in kinds.items()}
        docs = {sp: [] for sp in splits}
        filled = {key: 0 for key in quota}
        by_source = {}
        stats = {}
        for kind in kinds:
            if all(quota[(sp, kind)] == 0 for sp in splits):
                continue
            per_source = []
            for s in sources:
                if s["kind"] != kind:
                    continue
                paths = sorted(list_documents(s), key=lambda p: order_key(args.seed, s["package"], p))
                log(f"{s['package']} {s['version']}: {len(paths)} candidate files")
                per_source.append([(s, p) for p in paths])
            order = interleave(per_source)
            pos, batch = 0, 64
            while pos < len(order) and any(filled[(sp, kind)] < quota[(sp, kind)] for sp in splits):
                chunk = order[pos:pos + batch]
                pos += batch
                texts = []
                for s, p in chunk:
                    text, why = read_text(s, p)
                    if text is not None and special_re and special_re.search(text):
                        text, why = None, "contains a special token's text"
                    if why:
                        stats[why] = stats.get(why, 0) + 1
                    texts.append(text)
                enc = tok.encode_batch([t for t in texts if t is not None], add_special_tokens=False)
                it = iter(enc)
                for (s, p), text in zip(chunk, texts):
                    if text is None:
                        continue
                    ids = next(it).ids
                    n = len(ids)
                    if n < args.min_doc_tokens or (args.max_doc_tokens and n > args.max_doc_tokens):
                        stats["outside the length bounds"] = stats.get("outside the length bounds", 0) + 1
                        continue
                    open_splits = [sp for sp in splits if filled[(sp, kind)] < quota[(sp, kind)]]
                    if not open_splits:
                        break
                    # the open split holding the smallest share (of its quota) of this document's
                    # source, then the one furthest below its quota; ties go to calib
                    src_key = lambda x: by_source.get((x, s["package"]), 0) / quota[(x, kind)]  # noqa: E731
                    sp = min(open_splits, key=lambda x: (src_key(x), filled[(x, kind)] / quota[(x, kind)],
                                                         x != "calib"))
                    filled[(sp, kind)] += n
                    by_source[(sp, s["package"])] = by_source.get((sp, s["package"]), 0) + n
                    docs[sp].append({"kind": kind, "source": s["package"], "version": s["version"],
                                     "deb_sha256": s["deb_sha256"], "path": p,
                                     "sha256": sha256_bytes(text.encode("utf-8")), "ids": ids})
            for sp in splits:
                if filled[(sp, kind)] < quota[(sp, kind)]:
                    raise TokenSetError(f"{sp}: only {filled[(sp, kind)]} {kind} tokens available, "
                                        f"quota {quota[(sp, kind)]} (lower the target or the minimum length)")

        os.makedirs(args.out, exist_ok=True)
        tok_sha = sha256_file(args.tokenizer)
        tok_abs = os.path.abspath(args.tokenizer)
        tok_name = os.path.relpath(tok_abs, root) if tok_abs.startswith(root + os.sep) else tok_abs
        for sp in splits:
            if not docs[sp]:
                raise TokenSetError(f"{sp}: no documents")
            path = os.path.join(args.out, f"{sp}.tokens")
            arr = np.concatenate([np.asarray(d["ids"], dtype="<u4") for d in docs[sp]])
            if arr.size and int(arr.max()) >= vocab_size:
                raise TokenSetError(f"{sp}: token id {int(arr.max())} outside the vocabulary ({vocab_size})")
            manifest_docs, off = [], 0
            for d in docs[sp]:
                n = len(d["ids"])
                manifest_docs.append({"offset": off, "length": n, "kind": d["kind"], "source": d["source"],
                                      "version": d["version"], "deb_sha256": d["deb_sha256"],
                                      "path": d["path"], "sha256": d["sha256"]})
                off += n
            with open(path + ".part", "wb") as f:
                f.write(arr.tobytes())
            os.replace(path + ".part", path)
            manifest = {
                "format": "little-endian uint32 token ids, documents concatenated (no separators)",
                "split": sp,
                "tokens": int(arr.size),
                "tokens_sha256": sha256_file(path),
                "tokenizer": tok_name,
                "tokenizer_sha256": tok_sha,
                "vocab_size": vocab_size,
                "seed": args.seed,
                "min_doc_tokens": args.min_doc_tokens,
                "max_doc_tokens": args.max_doc_tokens,
                "code_fraction": args.code_fraction,
                "tokens_by_kind": {k: filled[(sp, k)] for k in kinds},
                "tokens_by_source": {s["package"]: sum(d["length"] for d in manifest_docs if d["source"] == s["package"])
                                     for s in sources},
                "documents": manifest_docs,
            }
            with open(path + ".json", "w") as f:
                json.dump(manifest, f, indent=1)
                f.write("\n")
            log(f"wrote {path}: {arr.size} tokens, {len(manifest_docs)} documents "
                f"({', '.join(f'{k} {v}' for k, v in manifest['tokens_by_source'].items())})")
        cal = {(d["source"], d["path"]) for d in docs["calib"]}
        assert not cal & {(d["source"], d["path"]) for d in docs["eval"]}, "splits overlap"
        if stats:
            log("skipped: " + ", ".join(f"{v} {k}" for k, v in sorted(stats.items())))
    except TokenSetError as e:
        print(f"make_token_sets: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
