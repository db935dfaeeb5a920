"""IndexCache SDK from Python, through the stable C ABI (libindexcache.so) and ctypes.

No compiled extension: this one file loads libindexcache.so and wraps include/indexcache/indexcache.h in
two classes, Model and Context. Logits come back as ``array.array('f')`` (zero-copy into NumPy with
``numpy.frombuffer(logits, dtype=numpy.float32)``).

The library is found through, in order: the environment variable INDEXCACHE_LIB (the .so file, or a
directory holding it), build trees next to this file (``<repo>/build*/bindings_c/``), and the system
loader path (``ctypes.util.find_library("indexcache")``).

    import indexcache as ic

    model = ic.Model.synthetic(num_layers=4, hidden_size=64, vocab_size=128, plan="FSFS")
    with ic.Context(model, device=ic.Device.CPU, max_tokens=4096) as ctx:
        seq = ctx.add_sequence()
        logits = ctx.prefill(seq, [1, 2, 3, 4])          # array('f') of vocab_size floats
        nxt = max(range(len(logits)), key=logits.__getitem__)
        logits = ctx.decode(seq, nxt)                      # one row
        loss, n = ctx.eval_loss([1, 2, 3, 4, 5])
    print(ic.metrics_text())

Errors raise IndexCacheError(status, message). Thread safety follows the C API: a Model may be shared;
a Context must not be used from two threads at once.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import dataclasses
import enum
import glob
import os
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "Architecture", "Context", "Device", "IndexCacheError", "Model", "ModelInfo", "Status",
    "cuda_device_count", "library_path", "metrics_exposer_port", "metrics_text", "start_metrics_exposer",
    "version",
]


class Status(enum.IntEnum):
    """ic_status_t."""
    OK = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    OUT_OF_MEMORY = 3
    UNAVAILABLE = 4
    FAILED_PRECONDITION = 5
    INTERNAL = 6
    ALREADY_EXISTS = 7
    OUT_OF_RANGE = 8
    UNIMPLEMENTED = 9
    ABORTED = 10


class Device(enum.IntEnum):
    """ic_device_t."""
    AUTO = 0
    CPU = 1
    CUDA = 2


class Architecture(enum.IntEnum):
    """ic_architecture_t."""
    DEEPSEEK_V32 = 0
    GLM_MOE_DSA = 1
    LLAMA_DSA = 2
    LLAMA = 3


class IndexCacheError(RuntimeError):
    """A failed ic_* call: `status` (a Status, or the raw int for a code this module does not know)
    and `message` (ic_last_error_message)."""

    def __init__(self, status: int, message: str):
        try:
            self.status: Union[Status, int] = Status(status)
            name = "IC_ERR_" + self.status.name if status else "IC_OK"
        except ValueError:
            self.status = status
            name = f"status {status}"
        self.message = message
        super().__init__(f"{name}: {message}")


# ---- C declarations (must match indexcache.h) ---------------------------------------------------------

class _ModelLoadParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("plan_file", ctypes.c_char_p)]


class _SyntheticParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("architecture", ctypes.c_int),
        ("seed", ctypes.c_uint64),
        ("num_layers", ctypes.c_int32),
        ("hidden_size", ctypes.c_int32),
        ("vocab_size", ctypes.c_int32),
        ("index_topk", ctypes.c_int32),
        ("index_n_heads", ctypes.c_int32),
        ("index_head_dim", ctypes.c_int32),
        ("max_position_embeddings", ctypes.c_int32),
        ("plan", ctypes.c_char_p),
    ]


class _ModelInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("architecture", ctypes.c_char_p),
        ("vocab_size", ctypes.c_int32),
        ("hidden_size", ctypes.c_int32),
        ("num_layers", ctypes.c_int32),
        ("index_topk", ctypes.c_int32),
        ("has_indexer", ctypes.c_int32),
        ("index_n_heads", ctypes.c_int32),
        ("index_head_dim", ctypes.c_int32),
        ("num_full_layers", ctypes.c_int32),
        ("max_position_embeddings", ctypes.c_int32),
    ]


class _ContextParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("device", ctypes.c_int),
        ("device_ordinal", ctypes.c_int32),
        ("max_tokens", ctypes.c_int64),
        ("block_size", ctypes.c_int32),
        ("prefill_chunk", ctypes.c_int32),
        ("plan", ctypes.c_char_p),
        ("metrics_address", ctypes.c_char_p),
        ("record_metrics", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("world_size", ctypes.c_int32),
        ("tp_size", ctypes.c_int32),
        ("ep_size", ctypes.c_int32),
        ("dist_id", ctypes.c_void_p),
        ("dist_timeout_ms", ctypes.c_int32),
        ("indexer_precision", ctypes.c_int32),
        ("attention_precision", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
        ("weight_precision", ctypes.c_int32),
    ]


IC_DIST_ID_BYTES = 256


_DISTILL_STEP_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_void_p)


class _DistillParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("index_n_heads", ctypes.c_int32),
        ("index_head_dim", ctypes.c_int32),
        ("index_topk", ctypes.c_int32),
        ("plan", ctypes.c_char_p),
        ("steps", ctypes.c_int64),
        ("windows_per_step", ctypes.c_int32),
        ("learning_rate", ctypes.c_double),
        ("warmup_steps", ctypes.c_int64),
        ("seed", ctypes.c_uint64),
        ("device", ctypes.c_int),
        ("threads", ctypes.c_int32),
        ("init_indexers", ctypes.c_char_p),
        ("checkpoint", ctypes.c_char_p),
        ("checkpoint_every", ctypes.c_int64),
        ("resume", ctypes.c_int32),
        ("bf16", ctypes.c_int32),
        ("on_step", _DISTILL_STEP_FN),
        ("user", ctypes.c_void_p),
    ]


_P = ctypes.c_void_p
_I32P = ctypes.POINTER(ctypes.c_int32)
_I64P = ctypes.POINTER(ctypes.c_int64)
_F32P = ctypes.POINTER(ctypes.c_float)
_SIZEP = ctypes.POINTER(ctypes.c_size_t)
_st = ctypes.c_int  # ic_status_t

_SIGNATURES = {
    "ic_version": (ctypes.c_int, []),
    "ic_version_string": (ctypes.c_char_p, []),
    "ic_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "ic_last_error_message": (ctypes.c_char_p, []),
    "ic_model_load_default_params": (_st, [_P]),
    "ic_model_load": (_st, [ctypes.c_char_p, _P, ctypes.POINTER(_P)]),
    "ic_synthetic_default_params": (_st, [_P]),
    "ic_model_create_synthetic": (_st, [_P, ctypes.POINTER(_P)]),
    "ic_model_save": (_st, [_P, ctypes.c_char_p]),
    "ic_model_free": (_st, [_P]),
    "ic_model_info": (_st, [_P, ctypes.POINTER(_ModelInfo)]),
    "ic_model_plan": (_st, [_P, ctypes.c_char_p, ctypes.c_size_t]),
    "ic_context_default_params": (_st, [_P]),
    "ic_context_create": (_st, [_P, _P, ctypes.POINTER(_P)]),
    "ic_context_free": (_st, [_P]),
    "ic_context_device": (_st, [_P, ctypes.POINTER(ctypes.c_int)]),
    "ic_context_plan": (_st, [_P, ctypes.c_char_p, ctypes.c_size_t]),
    "ic_context_free_tokens": (_st, [_P, _I64P]),
    "ic_context_set_cuda_graphs": (_st, [_P, ctypes.c_int32]),
    "ic_sequence_add": (_st, [_P, _I32P]),
    "ic_sequence_remove": (_st, [_P, ctypes.c_int32]),
    "ic_sequence_fork": (_st, [_P, ctypes.c_int32, _I32P]),
    "ic_sequence_length": (_st, [_P, ctypes.c_int32, _I64P]),
    "ic_prefill": (_st, [_P, ctypes.c_int32, _I32P, ctypes.c_size_t, _F32P]),
    "ic_decode": (_st, [_P, _I32P, _I32P, ctypes.c_size_t, _F32P]),
    "ic_eval_loss": (_st, [_P, _I32P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_double), _I64P]),
    "ic_search_plan": (_st, [_P, ctypes.POINTER(_I32P), _SIZEP, ctypes.c_size_t, ctypes.c_int32, ctypes.c_int,
                             ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_double), ctypes.c_size_t]),
    "ic_distill_default_params": (_st, [_P]),
    "ic_distill_indexers": (_st, [_P, ctypes.POINTER(_I32P), _SIZEP, ctypes.c_size_t, ctypes.c_char_p, _P,
                                  ctypes.POINTER(ctypes.c_double)]),
    "ic_dist_unique_id": (_st, [ctypes.c_int, ctypes.c_char_p]),
    "ic_context_idle_step": (_st, [_P]),
    "ic_metrics_text": (_st, [ctypes.c_char_p, ctypes.c_size_t, _SIZEP]),
    "ic_metrics_start_exposer": (_st, [ctypes.c_char_p]),
    "ic_metrics_exposer_port": (_st, [_I32P]),
    "ic_cuda_device_count": (ctypes.c_int, []),
}

# The version of indexcache.h these declarations follow (major, minor): a library with another
# major version, or an older minor one, is refused.
_HEADER_VERSION = (0, 1)


def _candidate_paths() -> List[str]:
    env = os.environ.get("INDEXCACHE_LIB")
    if env:
        if os.path.isdir(env):
            return [os.path.join(env, "libindexcache.so")]
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))  # bindings_c/python -> repo root
    found = sorted(glob.glob(os.path.join(repo, "build*", "bindings_c", "libindexcache.so")),
                   key=os.path.getmtime, reverse=True)  # the most recently built first
    found += [os.path.join(here, "libindexcache.so")]
    system = ctypes.util.find_library("indexcache")
    if system:
        found.append(system)
    return found


def _load_library() -> Tuple[ctypes.CDLL, str]:
    candidates = _candidate_paths()
    errors = []
    for path in candidates:
        if os.path.sep in path and not os.path.exists(path):
            errors.append(f"{path}: not found")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
            continue
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        return lib, path
    raise ImportError("cannot load libindexcache.so (set INDEXCACHE_LIB to the file or its directory); "
                      "tried: " + ("; ".join(errors) if errors else "nothing"))


_lib, _lib_path = _load_library()


def _check_abi() -> None:
    v = _lib.ic_version()
    major, minor = v // 10000, (v // 100) % 100
    if major != _HEADER_VERSION[0] or minor < _HEADER_VERSION[1]:
        raise ImportError(f"{_lib_path} is version {_lib.ic_version_string().decode()}; this module "
                          f"needs {_HEADER_VERSION[0]}.{_HEADER_VERSION[1]} or a later {_HEADER_VERSION[0]}.x")
    # The library's struct sizes must be the ones declared above (a 4 KiB scratch buffer absorbs any
    # larger struct safely).
    for fill, struct in ((_lib.ic_context_default_params, _ContextParams),
                         (_lib.ic_synthetic_default_params, _SyntheticParams),
                         (_lib.ic_model_load_default_params, _ModelLoadParams)):
        scratch = ctypes.create_string_buffer(4096)
        _check(fill(scratch))
        size = ctypes.c_size_t.from_buffer(scratch).value
        if size != ctypes.sizeof(struct):
            raise ImportError(f"{_lib_path}: {struct.__name__} is {size} bytes in the library and "
                              f"{ctypes.sizeof(struct)} in indexcache.py: rebuild or update the module")


def _check(status: int) -> None:
    if status != 0:
        raise IndexCacheError(status, (_lib.ic_last_error_message() or b"").decode("utf-8", "replace"))


def _bytes(s: Optional[Union[str, os.PathLike]]) -> Optional[bytes]:
    if s is None:
        return None
    b = os.fsencode(s)
    if b"\0" in b:  # C would silently cut the string there
        raise ValueError(f"{s!r} contains a NUL character")
    return b


_INT_RANGES = {
    ctypes.c_int32: (-2**31, 2**31 - 1), ctypes.c_int: (-2**31, 2**31 - 1),
    ctypes.c_int64: (-2**63, 2**63 - 1), ctypes.c_uint64: (0, 2**64 - 1),
}


def _int(value, ctype, name: str) -> int:
    """`value` as an int that fits `ctype`: ctypes itself truncates silently (2**32 + 1 becomes 1 as an
    int32, so a sequence id or a size would name something else)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = value.__index__()
    lo, hi = _INT_RANGES[ctype]
    if not lo <= value <= hi:
        raise OverflowError(f"{name} is {value}; it must be in [{lo}, {hi}]")
    return value


def _enum(enum_type, value, name: str):
    """An IntEnum member from a member, its int value, or its name (case-insensitive: "cpu")."""
    if isinstance(value, str):
        try:
            return enum_type[value.upper()]
        except KeyError:
            names = ", ".join(m.name.lower() for m in enum_type)
            raise ValueError(f"{name} is {value!r}; expected one of {names}") from None
    return _int(value, ctypes.c_int, name)


def _tokens(tokens: Union[Sequence[int], Iterable[int], int], name: str = "tokens") -> Tuple[ctypes.Array, int]:
    if isinstance(tokens, int):
        tokens = [tokens]
    elif isinstance(tokens, (str, bytes)):
        raise TypeError(f"{name} must be ints, got {type(tokens).__name__}")
    try:
        arr = array.array("i", tokens)  # C int == int32 on every platform this library supports
    except OverflowError:
        bad = next((t for t in tokens if isinstance(t, int) and not -2**31 <= t < 2**31), None)
        raise OverflowError(f"{name}: {bad} does not fit in int32") from None
    return (ctypes.c_int32 * len(arr)).from_buffer(arr), len(arr)


_check_abi()


def library_path() -> str:
    """The path of the loaded libindexcache.so."""
    return _lib_path


def version() -> str:
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.ic_version_string().decode()


def cuda_device_count() -> int:
    """Visible CUDA devices (0 in a CUDA-less build or without a GPU)."""
    return int(_lib.ic_cuda_device_count())


def _bool(value, name: str) -> bool:
    """value as a bool: a Python bool or a numpy scalar bool; TypeError naming `name` otherwise."""
    if isinstance(value, bool):
        return value
    kind = type(value)
    if kind.__module__ == "numpy" and getattr(getattr(value, "dtype", None), "kind", None) == "b" \
            and getattr(value, "shape", None) == ():
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {kind.__module__}.{kind.__qualname__}")


def dist_unique_id(device: "Device") -> bytes:
    """The id (IC_DIST_ID_BYTES bytes) every rank of one job passes to Context(dist_id=...)
    (ic_dist_unique_id). Device.CPU: ranks are threads of this process; Device.CUDA: processes over NCCL."""
    buf = ctypes.create_string_buffer(IC_DIST_ID_BYTES)
    _check(_lib.ic_dist_unique_id(int(_enum(Device, device, "device")), buf))
    return buf.raw


def metrics_text() -> str:
    """The Prometheus text exposition of every indexcache_* metric of this process."""
    needed = ctypes.c_size_t(0)
    _check(_lib.ic_metrics_text(None, 0, ctypes.byref(needed)))
    while True:
        buf = ctypes.create_string_buffer(needed.value + 4096)  # slack: metrics may grow meanwhile
        status = _lib.ic_metrics_text(buf, len(buf), ctypes.byref(needed))
        if status == 0:
            return buf.value.decode("utf-8")
        if needed.value < len(buf):
            _check(status)


def start_metrics_exposer(address: str) -> None:
    """Starts the process-wide HTTP exposer (GET /metrics) on e.g. "127.0.0.1:9464" (port 0: any)."""
    _check(_lib.ic_metrics_start_exposer(_bytes(address)))


def metrics_exposer_port() -> int:
    """The exposer's TCP port, or 0 when none runs."""
    port = ctypes.c_int32(0)
    _check(_lib.ic_metrics_exposer_port(ctypes.byref(port)))
    return port.value


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    index_topk: int
    has_indexer: bool
    index_n_heads: int
    index_head_dim: int
    num_full_layers: int
    max_position_embeddings: int


class Model:
    """An immutable model (ic_model_t). Create with Model.load or Model.synthetic; close() or a `with`
    block releases it early (contexts keep what they need alive)."""

    def __init__(self, handle: int):
        self._handle: Optional[int] = handle

    @classmethod
    def load(cls, directory: Union[str, os.PathLike], plan_file: Optional[str] = None) -> "Model":
        """Loads an HF checkpoint directory (config.json + *.safetensors); plan_file overrides its plan."""
        params = _ModelLoadParams()
        _check(_lib.ic_model_load_default_params(ctypes.byref(params)))
        keep = _bytes(plan_file)
        params.plan_file = keep
        out = _P()
        _check(_lib.ic_model_load(_bytes(directory), ctypes.byref(params), ctypes.byref(out)))
        return cls(out.value)

    @classmethod
    def synthetic(cls, *, architecture: Architecture = Architecture.DEEPSEEK_V32, seed: Optional[int] = None,
                  num_layers: Optional[int] = None, hidden_size: Optional[int] = None,
                  vocab_size: Optional[int] = None, index_topk: Optional[int] = None,
                  index_n_heads: Optional[int] = None, index_head_dim: Optional[int] = None,
                  max_position_embeddings: Optional[int] = None, plan: Optional[str] = None) -> "Model":
        """A deterministic in-memory model; unset fields take the library's defaults."""
        params = _SyntheticParams()
        _check(_lib.ic_synthetic_default_params(ctypes.byref(params)))
        params.architecture = _enum(Architecture, architecture, "architecture")
        for name, value in (("seed", seed), ("num_layers", num_layers), ("hidden_size", hidden_size),
                            ("vocab_size", vocab_size), ("index_topk", index_topk),
                            ("index_n_heads", index_n_heads), ("index_head_dim", index_head_dim),
                            ("max_position_embeddings", max_position_embeddings)):
            if value is not None:
                ctype = ctypes.c_uint64 if name == "seed" else ctypes.c_int32
                setattr(params, name, _int(value, ctype, name))
        keep = _bytes(plan)
        params.plan = keep
        out = _P()
        _check(_lib.ic_model_create_synthetic(ctypes.byref(params), ctypes.byref(out)))
        return cls(out.value)

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ValueError("the model is closed")
        return self._handle

    def save(self, directory: Union[str, os.PathLike]) -> None:
        """Writes config.json + model.safetensors (F32) to `directory`."""
        _check(_lib.ic_model_save(self.handle, _bytes(directory)))

    @property
    def info(self) -> ModelInfo:
        raw = _ModelInfo()
        raw.struct_size = ctypes.sizeof(raw)
        _check(_lib.ic_model_info(self.handle, ctypes.byref(raw)))
        return ModelInfo(raw.architecture.decode(), raw.vocab_size, raw.hidden_size, raw.num_layers,
                         raw.index_topk, bool(raw.has_indexer), raw.index_n_heads, raw.index_head_dim,
                         raw.num_full_layers, raw.max_position_embeddings)

    @property
    def plan(self) -> str:
        """The model's plan: one 'F' (Full) or 'S' (Shared) per layer."""
        buf = ctypes.create_string_buffer(self.info.num_layers + 1)
        _check(_lib.ic_model_plan(self.handle, buf, len(buf)))
        return buf.value.decode()

    def search_plan(self, windows: Sequence[Iterable[int]], target_full_layers: int, *,
                    device: Device = Device.AUTO) -> Tuple[str, List[float]]:
        """Greedy IndexCache plan search (ic_search_plan): the plan with target_full_layers Full layers
        and the calibration loss after every step ([0] = all Full). Each window is a token list (>= 2)."""
        arrays = [_tokens(w, f"windows[{i}]") for i, w in enumerate(windows)]
        n = len(arrays)
        ptrs = (_I32P * max(n, 1))(*[ctypes.cast(a, _I32P) for a, _ in arrays])
        lengths = (ctypes.c_size_t * max(n, 1))(*[k for _, k in arrays])
        layers = self.info.num_layers
        target = _int(target_full_layers, ctypes.c_int32, "target_full_layers")
        buf = ctypes.create_string_buffer(layers + 1)
        losses = (ctypes.c_double * (layers + 1))()
        _check(_lib.ic_search_plan(self.handle, ptrs, lengths, n, target,
                                   int(_enum(Device, device, "device")), buf, len(buf), losses, len(losses)))
        steps = layers - target_full_layers + 1
        return buf.value.decode(), [losses[i] for i in range(steps)]

    def distill_indexers(self, windows: Sequence[Iterable[int]], out_dir: Union[str, os.PathLike], *,
                         index_n_heads: int = 4, index_head_dim: int = 64, index_topk: int = 256,
                         plan: Optional[str] = None, steps: int = 200, windows_per_step: int = 1,
                         learning_rate: float = 1e-3, warmup_steps: int = 10, seed: int = 0,
                         device: Device = Device.AUTO, threads: int = 0,
                         init_indexers: Optional[Union[str, os.PathLike]] = None,
                         checkpoint: Optional[Union[str, os.PathLike]] = None, checkpoint_every: int = 50,
                         resume: bool = False, bf16: bool = True,
                         on_step: Optional[Callable[[int, int, float], None]] = None) -> float:
        """Trains lightning indexers for this dense model against its own attention (ic_distill_indexers;
        DESIGN.md §3: loss mean_t KL(p_t || softmax(I_t)); a plan makes it training-aware, arXiv 2603.12201
        §3.2) and writes a loadable Llama-DSA checkpoint to out_dir. Each window is a token list (>= 2).
        on_step(step, steps, loss) reports progress; an exception raised in it (KeyboardInterrupt included)
        stops the run after that step (checkpoint written when configured) and is re-raised here.
        Returns the last step's loss (nats)."""
        arrays = [_tokens(w, f"windows[{i}]") for i, w in enumerate(windows)]
        n = len(arrays)
        ptrs = (_I32P * max(n, 1))(*[ctypes.cast(a, _I32P) for a, _ in arrays])
        lengths = (ctypes.c_size_t * max(n, 1))(*[k for _, k in arrays])
        params = _DistillParams()
        _check(_lib.ic_distill_default_params(ctypes.byref(params)))
        for name, value, ctype in (("index_n_heads", index_n_heads, ctypes.c_int32),
                                   ("index_head_dim", index_head_dim, ctypes.c_int32),
                                   ("index_topk", index_topk, ctypes.c_int32), ("steps", steps, ctypes.c_int64),
                                   ("windows_per_step", windows_per_step, ctypes.c_int32),
                                   ("warmup_steps", warmup_steps, ctypes.c_int64), ("seed", seed, ctypes.c_uint64),
                                   ("threads", threads, ctypes.c_int32),
                                   ("checkpoint_every", checkpoint_every, ctypes.c_int64)):
            setattr(params, name, _int(value, ctype, name))
        params.learning_rate = float(learning_rate)
        params.device = int(_enum(Device, device, "device"))
        keep = [_bytes(plan), _bytes(init_indexers), _bytes(checkpoint)]
        params.plan, params.init_indexers, params.checkpoint = keep
        params.resume = 1 if resume else 0
        params.bf16 = 1 if bf16 else 0
        errors: List[BaseException] = []

        def trampoline(step, total, loss, _user):
            if on_step is not None and not errors:
                try:
                    on_step(int(step), int(total), float(loss))
                except BaseException as e:  # stops the run; re-raised after the C call returns
                    errors.append(e)
            return 1 if errors else 0

        callback = _DISTILL_STEP_FN(trampoline)
        params.on_step = callback
        final = ctypes.c_double()
        status = _lib.ic_distill_indexers(self.handle, ptrs, lengths, n, _bytes(out_dir), ctypes.byref(params),
                                          ctypes.byref(final))
        if errors:
            raise errors[0]
        _check(status)
        return final.value

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _check(_lib.ic_model_free(handle))

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing sensible to do
            pass

    def __repr__(self) -> str:
        if self._handle is None:
            return "<indexcache.Model closed>"
        i = self.info
        return f"<indexcache.Model {i.architecture} layers={i.num_layers} vocab={i.vocab_size} plan={self.plan}>"


class Context:
    """Sequences, caches and a device (ic_context_t). Not thread-safe. Unset options take the library's
    defaults (device AUTO, max_tokens 16384, block_size 64, prefill_chunk 512, the model's plan).
    metrics_address starts the process-wide Prometheus exposer. Several ranks (DESIGN.md §5): rank,
    world_size (= dp × tp_size), tp_size, ep_size and the dist_id from dist_unique_id() on every rank;
    creation returns once every rank has joined (threads: ctypes releases the GIL while it waits).
    indexer_precision: "f32" (default), "bf16" or "fp8" (DeepSeek-V3.2's E4M3 indexer with per-token
    scales); attention_precision: "f32" or "bf16" (tensor cores on CUDA, and the KV cache kept in BF16;
    ic_precision_t); weight_precision:
    "f32", "bf16" (Linear weights held in BF16, BF16 GEMMs with F32 accumulation) or "fp8" (DeepSeek's
    block-scaled FP8 for the attention and MLP / expert weights, 128 x 128 scales, FP8 GEMMs on CUDA and
    emulated on the CPU; the LM head, indexer and MLA kv_b stay BF16). ValueError for anything else.
    cuda_graphs: CUDA contexts replay decode steps from CUDA graphs (default True; ignored on the CPU;
    ic_context_set_cuda_graphs)."""

    def __init__(self, model: Model, *, device: Device = Device.AUTO, device_ordinal: int = 0,
                 max_tokens: Optional[int] = None, block_size: Optional[int] = None,
                 prefill_chunk: Optional[int] = None, plan: Optional[str] = None,
                 metrics_address: Optional[str] = None, record_metrics: bool = True,
                 rank: int = 0, world_size: int = 1, tp_size: int = 1, ep_size: int = 1,
                 dist_id: Optional[bytes] = None, dist_timeout_ms: Optional[int] = None,
                 indexer_precision: str = "f32", attention_precision: str = "f32",
                 weight_precision: str = "f32", cuda_graphs: bool = True):
        self._handle: Optional[int] = None
        if not isinstance(model, Model):
            raise TypeError(f"model must be an indexcache.Model, got {type(model).__name__}")
        params = _ContextParams()
        _check(_lib.ic_context_default_params(ctypes.byref(params)))
        params.device = _enum(Device, device, "device")
        params.device_ordinal = _int(device_ordinal, ctypes.c_int32, "device_ordinal")
        if max_tokens is not None:
            params.max_tokens = _int(max_tokens, ctypes.c_int64, "max_tokens")
        if block_size is not None:
            params.block_size = _int(block_size, ctypes.c_int32, "block_size")
        if prefill_chunk is not None:
            params.prefill_chunk = _int(prefill_chunk, ctypes.c_int32, "prefill_chunk")
        keep = (_bytes(plan), _bytes(metrics_address))
        params.plan, params.metrics_address = keep
        params.record_metrics = 1 if record_metrics else 0
        cuda_graphs = _bool(cuda_graphs, "cuda_graphs")
        params.rank, params.world_size, params.tp_size, params.ep_size = (
            _int(v, ctypes.c_int32, n) for v, n in ((rank, "rank"), (world_size, "world_size"),
                                                    (tp_size, "tp_size"), (ep_size, "ep_size")))
        if dist_timeout_ms is not None:
            params.dist_timeout_ms = _int(dist_timeout_ms, ctypes.c_int32, "dist_timeout_ms")
        precisions = {"f32": 0, "bf16": 1, "fp8": 2}
        for name, value, allowed in (("indexer_precision", indexer_precision, ("f32", "bf16", "fp8")),
                                     ("attention_precision", attention_precision, ("f32", "bf16")),
                                     ("weight_precision", weight_precision, ("f32", "bf16", "fp8"))):
            if not isinstance(value, str) or value not in allowed:  # (a list is not hashable: check str first)
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
            setattr(params, name, precisions[value])
        id_buf = None
        if dist_id is not None:
            if not isinstance(dist_id, (bytes, bytearray)) or len(dist_id) != IC_DIST_ID_BYTES:
                raise ValueError(f"dist_id must be the {IC_DIST_ID_BYTES} bytes of dist_unique_id()")
            id_buf = ctypes.create_string_buffer(bytes(dist_id), IC_DIST_ID_BYTES)
            params.dist_id = ctypes.cast(id_buf, ctypes.c_void_p)
        out = _P()
        _check(_lib.ic_context_create(model.handle, ctypes.byref(params), ctypes.byref(out)))
        self._handle = out.value
        if not cuda_graphs:
            self.set_cuda_graphs(False)
        self.vocab_size = model.info.vocab_size
        self.num_layers = model.info.num_layers

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ValueError("the context is closed")
        return self._handle

    @property
    def device(self) -> Device:
        out = ctypes.c_int(0)
        _check(_lib.ic_context_device(self.handle, ctypes.byref(out)))
        return Device(out.value)

    @property
    def plan(self) -> str:
        buf = ctypes.create_string_buffer(self.num_layers + 1)
        _check(_lib.ic_context_plan(self.handle, buf, len(buf)))
        return buf.value.decode()

    @property
    def free_tokens(self) -> int:
        out = ctypes.c_int64(0)
        _check(_lib.ic_context_free_tokens(self.handle, ctypes.byref(out)))
        return out.value

    def set_cuda_graphs(self, enabled: bool) -> None:
        """CUDA-graph decode on or off from the next step (ic_context_set_cuda_graphs; off frees the captured
        graphs; a no-op on the CPU). TypeError for a non-bool."""
        _check(_lib.ic_context_set_cuda_graphs(self.handle, 1 if _bool(enabled, "enabled") else 0))

    def add_sequence(self) -> int:
        out = ctypes.c_int32(0)
        _check(_lib.ic_sequence_add(self.handle, ctypes.byref(out)))
        return out.value

    def fork_sequence(self, seq_id: int) -> int:
        """A new sequence whose cache copies seq_id's (parallel sampling with one prefill); its id."""
        out = ctypes.c_int32(0)
        _check(_lib.ic_sequence_fork(self.handle, _int(seq_id, ctypes.c_int32, "seq_id"), ctypes.byref(out)))
        return out.value

    def remove_sequence(self, seq_id: int) -> None:
        _check(_lib.ic_sequence_remove(self.handle, _int(seq_id, ctypes.c_int32, "seq_id")))

    def sequence_length(self, seq_id: int) -> int:
        out = ctypes.c_int64(0)
        _check(_lib.ic_sequence_length(self.handle, _int(seq_id, ctypes.c_int32, "seq_id"), ctypes.byref(out)))
        return out.value

    def prefill(self, seq_id: int, tokens: Iterable[int], logits: bool = True) -> Optional[array.array]:
        """Appends tokens to the sequence; returns the last token's logits [vocab] (or None)."""
        seq_id = _int(seq_id, ctypes.c_int32, "seq_id")
        toks, n = _tokens(tokens)
        out = array.array("f", bytes(4 * self.vocab_size)) if logits else None
        ptr = (ctypes.c_float * self.vocab_size).from_buffer(out) if logits else None
        _check(_lib.ic_prefill(self.handle, seq_id, toks, n, ptr))
        return out

    def decode(self, seq_ids: Union[int, Sequence[int]], tokens: Union[int, Sequence[int]],
               logits: bool = True) -> Union[None, array.array, List[array.array]]:
        """One decode step. With a single id and token, returns that row [vocab]; with sequences of
        ids and tokens (one per sequence, ids distinct), returns a list of rows."""
        single = isinstance(seq_ids, int)
        ids, n = _tokens(seq_ids, "seq_ids")
        toks, m = _tokens(tokens)
        if n != m:
            raise ValueError(f"decode: {n} sequence ids but {m} tokens")
        flat = array.array("f", bytes(4 * self.vocab_size * n)) if logits else None
        ptr = (ctypes.c_float * (self.vocab_size * n)).from_buffer(flat) if logits else None
        _check(_lib.ic_decode(self.handle, ids, toks, n, ptr))
        if flat is None:
            return None
        v = self.vocab_size
        rows = [flat[i * v:(i + 1) * v] for i in range(n)]
        return rows[0] if single else rows

    def idle_step(self) -> None:
        """Expert parallel: join one forward pass's expert all-to-all with no tokens (ic_context_idle_step)."""
        _check(_lib.ic_context_idle_step(self.handle))

    def eval_loss(self, tokens: Iterable[int]) -> Tuple[float, int]:
        """(mean next-token loss in nats, predicted tokens) of `tokens` as a fresh temporary sequence."""
        toks, n = _tokens(tokens)
        loss = ctypes.c_double(0)
        predicted = ctypes.c_int64(0)
        _check(_lib.ic_eval_loss(self.handle, toks, n, ctypes.byref(loss), ctypes.byref(predicted)))
        return loss.value, predicted.value

    def metrics_text(self) -> str:
        """The process-wide metrics (every context records into one registry)."""
        return metrics_text()

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _check(_lib.ic_context_free(handle))

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
