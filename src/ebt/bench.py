"""Speed, measured side by side in one run (never asserted in tests); SPEC §7 is the cost model.

`ebt bench [--preset SIZE] [--json]` measures, on this machine and in one process:

- training: median optimizer-step time of the EBT (System 1, 2 steps), the EBT (System 2) and
  the Transformer++ of the same size on the same random batches, alternating them so a noisy
  shared machine slows all alike; `train_ratio` = EBT S1 step / Transformer++ step;
- FLOPs per training token from the analytical model below, and the achieved fraction of this
  machine's measured matmul throughput at the same precision (`mfu_ebt`, `mfu_transformer`);
- generation after a 256-token prompt, with and without the KV cache (`cache_speedup`, EBT),
  seconds per thinking step per generated token against a Transformer++ cached decode step;
  with `--compile`, the same again with inference compiled (`ebt.compiled`), interleaved with the
  eager runs: `*_compiled_*` keys, `compile_speedup` (cached EBT token, eager / compiled) and the
  warm-up that compiles (`*_compile_s`);
- memory: what a training step of each kind holds for its backward pass and its peak, without
  and with activation checkpointing (`activation_memory`).

By default everything runs on the CPU in fp32, as the figures this project records; `device` and
`precision` (fp32 or bf16 autocast, as `train.precision`) measure the same on a CUDA device
(`benchmarks/gpu_check.sh`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import weakref
from dataclasses import replace
from functools import partial
from typing import Any, Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ebt.config import RunConfig
from ebt.data.batches import Batch
from ebt.generate import generate
from ebt.models import build_model, compiled_inference, count_parameters, set_activation_checkpointing
from ebt.objectives import make_objective
from ebt.parallel import Parallel
from ebt.precision import DTYPES, autocast, grad_scaler
from ebt.presets import preset
from ebt.rundata.text import TextData
from ebt.schedule import BETAS, lr_scheduler, parameter_groups
from ebt.train import train_step

KINDS = {"ebt": "text-ebt-{}", "ebt_s2": "text-ebt-s2-{}", "transformer": "text-transformer-{}"}
VOCAB = 256  # the byte vocabulary of the presets


def machine(device: torch.device | str = "cpu") -> dict:
    """The machine a benchmark ran on; `cuda`: the name of the CUDA device measured, or of the first
    one when the benchmark ran on the CPU (None without CUDA)."""
    device = torch.device(device)
    cuda = device if device.type == "cuda" else 0
    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(cuda) if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CUDA_MATMULS = 10  # products per timing of the CUDA matmul throughput


def matmul_flops_per_s(n: int | None = None, repeats: int = 10, device: torch.device | str = "cpu",
                       precision: str = "fp32") -> float:
    """The device's matmul throughput at `precision` (the MFU denominator), best of `repeats`.

    n × n matrices: 1024 on the CPU; 8192 on CUDA, large enough for the tensor cores to reach their
    peak. Each timing on CUDA covers `CUDA_MATMULS` products, so launch and sync costs vanish."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    inner = CUDA_MATMULS if device.type == "cuda" else 1
    dtype = DTYPES.get(precision, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def products() -> None:
        for _ in range(inner):
            a @ b

    products()  # warm-up: library initialization, clocks
    best = min(_timed(products, device) for _ in range(repeats))
    return 2 * n**3 * inner / best


def _timed(fn, device: torch.device | str = "cpu") -> float:
    """Seconds `fn` takes, its queued device work included (CUDA runs asynchronously)."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _config(kind: str, size: str, overrides: Sequence[tuple[str, str]] = ()) -> RunConfig:
    """The preset of `kind` at `size`, with `(section.key, value)` overrides (ConfigError for a bad one)."""
    config = preset(KINDS[kind].format(size)).with_overrides(list(overrides))
    config.text.vocab_size = VOCAB
    return config


def train_flops_per_token(config: RunConfig) -> float:
    """Analytical training FLOPs per (fresh) token (SPEC §7), matmuls only.

    N = non-embedding matmul parameters per token position, A = 2·L·S·D the forward attention
    score/value FLOPs of a causal pass (S/2 keys on average), H = 2·D·V the V-sized map.
    Transformer++: forward 2N + A + H, backward twice that → 3 × (2N + A + H).
    EBT: a context pass with its backward, 3 × (2N + A), per landscape in use (System 1: one per
    step; System 2: one, shared by all steps). Per thinking step, the candidate stream: a step
    that builds the second-order graph costs about 5 forwards (forward, backward to the
    candidate, then the parameter backward through both: SPEC §7's 2N + 4N + 4N); a step without
    it (System 2's truncated steps) 2 forwards. System 2 runs (min_steps + steps) / 2 steps on
    average, and its replay buffer adds half a batch of replayed sequences to every batch. The
    ranking term (think.ranking_weight) scores the steps + 1 visited candidates of each of its
    think.ranking_samples descents once more with a first-order backward (3 forwards each), the
    descents beyond the first running first-order (2 forwards a step).
    """
    m = config.model
    n = 2 * count_parameters(build_model(config))  # 2 FLOPs per multiply-add
    attention = 2 * m.n_layers * m.context_len * m.dim
    head = 2 * m.dim * config.text.vocab_size
    if m.kind == "transformer":
        return 3 * (n + attention + head)
    t = config.think
    steps = (t.min_steps + t.steps) / 2 if t.min_steps else t.steps
    graph_steps = 1 if t.truncate_graph else steps
    candidate = (5 * graph_steps + 2 * (steps - graph_steps)) * (n + attention + head)
    if t.ranking_weight:  # the other starts' first-order steps, then the pool's scoring pass and its backward
        m = t.ranking_samples
        candidate += (2 * (m - 1) * steps + 3 * (steps + 1) * m) * (n + attention + head)
    contexts = t.num_landscapes
    replay = 1.5 if t.replay_buffer_size else 1.0
    return replay * (contexts * 3 * (n + attention) + candidate)


def train_step_times(size: str = "tiny", repeats: int = 10, warmup: int = 2, seed: int = 0,
                     device: torch.device | str = "cpu", precision: str = "fp32", overrides: Sequence[tuple[str, str]] = ()) -> dict:
    """Median seconds per optimizer step of each model kind at one size, on the same batches: the
    trainer's own step (`ebt.train.train_step`: autocast at `precision`, train.grad_clip,
    train.grad_accum micro-batches, the loss scaler, the lr schedule) on one process."""
    torch.manual_seed(seed)
    setups = {}
    for kind in KINDS:
        config = _config(kind, size, overrides)
        model = build_model(config).to(device)
        optimizer = torch.optim.AdamW(parameter_groups(model, config.train, config.think.step_size_lr_mult), betas=BETAS)
        step = partial(train_step, Parallel(make_objective(model), model, device), optimizer,
                       lr_scheduler(optimizer, config.train, config.train.steps), grad_scaler(precision, device),
                       data=TextData, tc=replace(config.train, precision=precision))
        setups[kind] = (config, model, step)
    b, s = setups["ebt"][0].train.batch_size, setups["ebt"][0].model.context_len
    accum = setups["ebt"][0].train.grad_accum
    times: dict[str, list[float]] = {k: [] for k in setups}
    for i in range(warmup + repeats):
        batch = torch.randint(0, VOCAB, (b, s + 1))
        seeds = torch.randint(0, 2**62, (b,))  # each example's own draws, as `TrainingBatches` gives them
        micro_batches = [Batch(d.to(device), e.to(device)) for d, e in zip(batch.chunk(accum), seeds.chunk(accum))]
        for kind, (_, model, step) in setups.items():
            elapsed = _timed(lambda: step(micro_batches), device)
            if i >= warmup:
                times[kind].append(elapsed)
    return {"batch_size": b, "context_len": s, "step_s": {k: statistics.median(v) for k, v in times.items()},
            "flops_per_token": {k: train_flops_per_token(setups[k][0]) for k in setups},
            "non_embedding_params": count_parameters(setups["ebt"][1])}


def generation_times(size: str = "tiny", prompt_len: int = 256, new_tokens: int = 16, repeats: int = 3,
                     seed: int = 0, device: torch.device | str = "cpu", precision: str = "fp32",
                     overrides: Sequence[tuple[str, str]] = (), compile: bool = False) -> dict:
    """Seconds per generated token after a `prompt_len`-token prompt, cached and uncached, the
    median of `repeats` runs with the four (model, cache) settings interleaved; with `compile`,
    eight: each also with inference compiled (`ebt.models.compiled_inference`), after a warm-up
    whose seconds (compiling, for both cache settings) are `{kind}_compile_s`.

    The window is widened to hold prompt and continuation, so the cache is never reset by a
    sliding window. Untrained models: speed does not depend on the weights.
    """
    torch.manual_seed(seed)
    prompt = torch.randint(0, VOCAB, (prompt_len,)).tolist()
    models = {}
    for kind in ("ebt", "transformer"):
        config = _config(kind, size, overrides)
        config.model.context_len = prompt_len + new_tokens
        models[kind] = build_model(config).to(device).eval()
    settings = [(kind, cache, fast) for kind in models for fast in ((False, True) if compile else (False,))
                for cache in (True, False)]
    times: dict[tuple[str, bool, bool], list[float]] = {s: [] for s in settings}

    def tokens(kind: str, cache: bool, fast: bool, n: int) -> float:
        with compiled_inference(models[kind], fast):
            return _timed(lambda: generate(models[kind], prompt, n, temperature=0, cache=cache, device=device,
                                            precision=precision), device)

    result: dict = {}
    for kind, cache, fast in settings:
        warm_up = tokens(kind, cache, fast, 2)
        if fast:
            result[f"{kind}_compile_s"] = result.get(f"{kind}_compile_s", 0.0) + warm_up
    for _ in range(repeats):
        for kind, cache, fast in settings:
            times[kind, cache, fast].append(tokens(kind, cache, fast, new_tokens))
    for (kind, cache, fast), t in times.items():
        key = f"{kind}_{'cached' if cache else 'uncached'}{'_compiled' if fast else ''}_s_per_token"
        result[key] = statistics.median(t) / new_tokens
    result["ebt_think_steps"] = models["ebt"].think_config.steps
    return result


def compiled_ratios(gen: dict) -> dict:
    """The compiled generation's ratios, from `generation_times(compile=True)`: eager / compiled
    per token (`compile_speedup`: the cached EBT; and the others), the cache's speed-up and one
    thinking step against a Transformer++ decode step, both compiled."""
    result = {}
    for kind in ("ebt", "transformer"):
        prefix = "" if kind == "ebt" else "transformer_"
        for cache in ("cached", "uncached"):
            name = f"{prefix}compile_speedup" + ("" if cache == "cached" else "_uncached")
            result[name] = gen[f"{kind}_{cache}_s_per_token"] / gen[f"{kind}_{cache}_compiled_s_per_token"]
        result[f"{prefix}cache_speedup_compiled"] = (gen[f"{kind}_uncached_compiled_s_per_token"]
                                                     / gen[f"{kind}_cached_compiled_s_per_token"])
    thinking_step = gen["ebt_cached_compiled_s_per_token"] / gen["ebt_think_steps"]
    result["ebt_s_per_thinking_step_per_token_compiled"] = thinking_step
    result["thinking_step_vs_decode_step_compiled"] = thinking_step / gen["transformer_cached_compiled_s_per_token"]
    return result


class LiveMemory(TorchDispatchMode):
    """Bytes held by the tensors that the operations run under it allocate: `live` now, `peak` the
    most at any moment. Exact and by storage: a storage counts once (views, in-place results), from
    the operation that makes it until it is freed (autograd's saved tensors, the backward pass and
    checkpointing's recomputation included); tensors made before, such as weights, never count."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.sizes: dict[int, int] = {}  # data pointer → bytes of each counted storage still alive

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            storage = t.untyped_storage()
            pointer, size = storage.data_ptr(), storage.nbytes()
            if size and pointer not in given and pointer not in self.sizes:
                self.sizes[pointer] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                # A storage's Python object lives exactly as long as the storage itself.
                weakref.finalize(storage, self._freed, pointer)
        return out

    def _freed(self, pointer: int) -> None:
        self.live -= self.sizes.pop(pointer)


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def activation_memory(size: str = "tiny", device: torch.device | str = "cpu", precision: str = "fp32",
                      overrides: Sequence[tuple[str, str]] = ()) -> dict:
    """MiB of memory a training step of each kind allocates beyond weights, optimizer state and
    batch (the activation memory, which dominates training), without and with activation
    checkpointing (`ebt.models.set_activation_checkpointing`; keys `…_checkpointed`):

    - `{kind}_activation_mib`: what the loss's forward pass leaves allocated when it returns, all
      of it for the backward pass: saved activations, an EBT's second-order graph of ∇E and, with
      checkpointing, the inputs kept to recompute from;
    - `{kind}_peak_mib`: the most allocated at any moment of the step, forward and
      `loss.backward()`. Checkpointing moves memory into the backward pass, where each
      recomputed block or thinking step is materialized again (an EBT's whole step with its
      second-order graph, one at a time): the number held between the passes alone would flatter it.

    Counted exactly, by storage (`LiveMemory`), on one step after an unmeasured one (which
    allocates System 2's replay buffer and fills it, so the step measured replays half a batch
    as in training); parameter gradients are freed in between, as the trainer does, and counted.
    Under bf16 the weights' 16-bit copies that autocast makes during the forward pass count too.
    On CUDA, `{kind}_allocator_peak_mib` is the allocator's own peak of the step, as a cross-check."""
    result = {}
    for kind in KINDS:
        config = _config(kind, size, overrides)
        torch.manual_seed(0)
        model = build_model(config).to(device)
        objective = make_objective(model)
        batch = torch.randint(0, VOCAB, (config.train.batch_size, config.model.context_len + 1)).to(device)
        with autocast(precision, device):
            loss, _ = objective(batch[:, :-1], batch[:, 1:])
        loss.backward()
        for checkpointed in (False, True):
            set_activation_checkpointing(model, checkpointed)
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same System 2 step count and replayed sequences for both
            cuda = torch.device(device).type == "cuda"
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            with LiveMemory() as memory:
                with autocast(precision, device):
                    loss, _ = objective(batch[:, :-1], batch[:, 1:])
                held = memory.live
                loss.backward()
            suffix = "_checkpointed" if checkpointed else ""
            result[f"{kind}_activation_mib{suffix}"] = held / 2**20
            result[f"{kind}_peak_mib{suffix}"] = memory.peak / 2**20
            if cuda:  # the same peak as the CUDA caching allocator counts it (block rounding included)
                result[f"{kind}_allocator_peak_mib{suffix}"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return result


def run(size: str = "tiny", repeats: int = 10, prompt_len: int = 256, new_tokens: int = 16, memory: bool = True,
        device: torch.device | str = "cpu", precision: str = "fp32", overrides: Sequence[tuple[str, str]] = (),
        compile: bool = False) -> dict:
    """Every measurement of the module at one size, on `device` at `precision` (fp32 or bf16), with
    `(section.key, value)` config overrides applied to all three kinds' presets."""
    peak = matmul_flops_per_s(device=device, precision=precision)
    train = train_step_times(size, repeats, device=device, precision=precision, overrides=overrides)
    step, flops = train["step_s"], train["flops_per_token"]
    tokens = train["batch_size"] * train["context_len"]
    gen = generation_times(size, prompt_len, new_tokens, device=device, precision=precision, overrides=overrides,
                           compile=compile)
    result = {
        "size": size, "device": str(device), "precision": precision, "overrides": dict(overrides),
        "batch_size": train["batch_size"], "context_len": train["context_len"], "vocab_size": VOCAB,
        "non_embedding_params": train["non_embedding_params"], "repeats": repeats,
        **{f"{k}_step_s": v for k, v in step.items()},
        **{f"{k}_tokens_per_s": tokens / v for k, v in step.items()},
        **{f"{k}_flops_per_token": v for k, v in flops.items()},
        "train_ratio": step["ebt"] / step["transformer"],
        "train_ratio_s2": step["ebt_s2"] / step["transformer"],
        "flops_ratio": flops["ebt"] / flops["transformer"],
        "matmul_flops_per_s": peak,
        "mfu_ebt": flops["ebt"] * tokens / step["ebt"] / peak,
        "mfu_ebt_s2": flops["ebt_s2"] * tokens / step["ebt_s2"] / peak,
        "mfu_transformer": flops["transformer"] * tokens / step["transformer"] / peak,
        "prompt_len": prompt_len, "new_tokens": new_tokens, **gen,
        "cache_speedup": gen["ebt_uncached_s_per_token"] / gen["ebt_cached_s_per_token"],
        "transformer_cache_speedup": gen["transformer_uncached_s_per_token"] / gen["transformer_cached_s_per_token"],
        "ebt_s_per_thinking_step_per_token": gen["ebt_cached_s_per_token"] / gen["ebt_think_steps"],
        "thinking_step_vs_decode_step": gen["ebt_cached_s_per_token"] / gen["ebt_think_steps"]
        / gen["transformer_cached_s_per_token"],
        "machine": machine(device),
    }
    if compile:
        result.update(compiled_ratios(gen))
    if memory:
        result.update(activation_memory(size, device, precision, overrides))
    return result


def report(r: dict) -> str:
    """The readable table of a `run` result."""
    m = r["machine"]
    precision = r.get("precision", "fp32")  # results recorded before `precision` existed ran in fp32
    lines = []
    lines.append(f"size {r['size']}: batch {r['batch_size']} × {r['context_len']} tokens, V = {r['vocab_size']}, "
                 f"{r['non_embedding_params'] / 1e6:.2f}M non-embedding parameters; {m['processor']}, "
                 f"{m['torch_threads']} threads, torch {m['torch']}; on {_device_name(r)}, "
                 f"{precision} matmul {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")
    lines.append(f"{'training (median of ' + str(r['repeats']) + ')':<28}{'step':>10}{'tokens/s':>11}{'GFLOP/token':>13}{'MFU':>7}")
    for kind, label in (("ebt", "EBT S1 (2 steps)"), ("ebt_s2", "EBT S2 (3 steps)"), ("transformer", "Transformer++")):
        mfu = r["mfu_transformer"] if kind == "transformer" else r[f"mfu_{kind}"]
        lines.append(f"  {label:<26}{r[f'{kind}_step_s'] * 1e3:>8.0f}ms{r[f'{kind}_tokens_per_s']:>11.0f}"
                     f"{r[f'{kind}_flops_per_token'] / 1e9:>13.4f}{mfu:>7.1%}")
    lines.append(f"  train_ratio EBT S1 / Transformer++ {r['train_ratio']:.2f} (S2 {r['train_ratio_s2']:.2f}; "
                 f"FLOP model {r['flops_ratio']:.2f})")
    lines.append(f"generation after a {r['prompt_len']}-token prompt, {r['new_tokens']} tokens, greedy:")
    for kind in ("ebt", "transformer"):
        lines.append(f"  {kind:<12} cached {r[f'{kind}_cached_s_per_token'] * 1e3:8.1f} ms/token   "
                     f"uncached {r[f'{kind}_uncached_s_per_token'] * 1e3:8.1f} ms/token")
    lines.append(f"  cache_speedup (EBT) {r['cache_speedup']:.1f}×, Transformer++ {r['transformer_cache_speedup']:.1f}×; "
                 f"one thinking step = {r['thinking_step_vs_decode_step']:.2f} Transformer++ decode steps")
    if "compile_speedup" in r:
        lines.append("generation compiled (torch.compile), measured interleaved with the above:")
        for kind in ("ebt", "transformer"):
            prefix = "" if kind == "ebt" else "transformer_"
            lines.append(f"  {kind:<12} cached {r[f'{kind}_cached_compiled_s_per_token'] * 1e3:8.1f} ms/token   "
                         f"uncached {r[f'{kind}_uncached_compiled_s_per_token'] * 1e3:8.1f} ms/token   "
                         f"eager / compiled {r[f'{prefix}compile_speedup']:.2f}× / "
                         f"{r[f'{prefix}compile_speedup_uncached']:.2f}×   warm-up {r[f'{kind}_compile_s']:.0f} s")
        lines.append(f"  cache_speedup (EBT) {r['cache_speedup_compiled']:.1f}×, Transformer++ "
                     f"{r['transformer_cache_speedup_compiled']:.1f}×; one thinking step = "
                     f"{r['thinking_step_vs_decode_step_compiled']:.2f} Transformer++ decode steps")
    if "ebt_activation_mib" in r:
        lines.append("memory of a training step, MiB held for backward / peak, without → with activation checkpointing:")
        for kind, label in (("ebt", "EBT S1"), ("ebt_s2", "EBT S2"), ("transformer", "Transformer++")):
            lines.append(f"  {label:<26}{r[f'{kind}_activation_mib']:>8.0f} / {r[f'{kind}_peak_mib']:<8.0f}→"
                         f"{r[f'{kind}_activation_mib_checkpointed']:>8.0f} / {r[f'{kind}_peak_mib_checkpointed']:.0f}")
    return "\n".join(lines)


def _device_name(r: dict) -> str:
    device = r.get("device", "cpu")
    return f"{device} ({r['machine']['cuda']})" if device.startswith("cuda") else device
