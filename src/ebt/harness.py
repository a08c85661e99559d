"""An `ebt` model type for lm-evaluation-harness (lm_eval 0.4.13): text runs scored on its tasks.

    python -m ebt.harness tasks --out harness-tasks    # the downstream sets as lm_eval tasks
    python -m ebt.harness --model ebt --model_args pretrained=runs/ebt,steps=3,samples=2 \\
        --include_path harness-tasks --tasks ebt_downstream

Importing this module registers `EBTLM` with lm_eval's model registry as "ebt". lm_eval 0.4.13
reads no plugin entry points, so its own `lm_eval` command never imports us: `python -m
ebt.harness ARGS` is that command (`lm_eval ARGS`) run after the import, and Python code imports
this module before `lm_eval.simple_evaluate(model="ebt", ...)` (or passes an `EBTLM`).

Every score goes through the library's own scorer, `ebt.evaluate.evaluate` (its per-window records),
on the windows `ebt eval` builds, so the harness's numbers are `ebt eval`'s by construction at the
same seed and batch size (an EBT's thinking starts from random candidates drawn batch by batch;
each task's requests are scored apart, so that its figures do not depend on the tasks beside it).
Log-likelihoods are natural logarithms (nats).

- `loglikelihood`: each (context, continuation) is an `ebt.data.pairs.Pair`, encoded by
  `encode_pairs(..., cut_prompts=True)`: one window per request, the context read, the
  continuation scored, as `ebt eval --data PAIRS.jsonl` scores its pairs. A context too long for
  the window keeps its last tokens (`ebt eval` refuses it), at least half a window's; a
  continuation longer than the rest of the window is scored on its first tokens that fit, with a
  warning: a log-likelihood of part of it.
- `loglikelihood_rolling`: a text's tokens in windows of max_length + 1, as `ebt eval` walks a
  corpus (each window starts on the last token of the previous, so every token is predicted
  once), except the last, moved back to end on the text's end: the tokens it shares with the one
  before are read, not scored again (lm_eval's rule, for the most context).
- `generate_until`: `ebt.generate.generate` from the context's tokens, stopped at the first stop
  string (`until`), greedy unless the task asks for `do_sample`.

An empty context ("" — lm_eval sends it for unconditional scores, and every rolling text starts
with none) is read as the document separator "\\n\\n" (`ebt.data.tokens.DOCUMENT_SEPARATOR`): in
training every document after a corpus's first follows it, so it is what a model has seen before a
first token. The separator is read, never scored.

`write_tasks` (`python -m ebt.harness tasks`) turns the task templates in `ebt/harness_tasks/` into
lm_eval task YAMLs for the downstream sets (`ebt.data.downstream`), with the absolute data paths
`datasets` needs: lm_eval's YAML expands no environment variables.

Read next: `ebt/evaluate.py` (the scorer), `ebt/data/pairs.py` (prompt/answer windows).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import warnings
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, Sequence


from ebt.packages import PackageError, import_package


def _lm_eval(module: str):
    """An lm_eval module; PackageError in one line when lm_eval is missing or broken (an optional extra)."""
    return import_package(module, package="lm_eval", needed_for="ebt.harness (lm-evaluation-harness's model type)",
                          pip="'energy-based-transformers[eval]'",
                          otherwise="run `make venv` (it installs requirements-eval.txt)")


try:
    _lm_eval("lm_eval.models")  # lm_eval's own models: get_model adds them only to an empty registry
    LM = _lm_eval("lm_eval.api.model").LM
    model_registry = _lm_eval("lm_eval.api.registry").model_registry
    simple_parse_args_string = _lm_eval("lm_eval.utils").simple_parse_args_string
except PackageError as error:
    if __name__ == "__main__":  # `python -m ebt.harness`: the one line, not a traceback
        print(f"python -m ebt.harness: error: {error}", file=sys.stderr)
        sys.exit(2)
    raise

from ebt.checks import check_int
from ebt.data.downstream import DOWNSTREAM_SETS, UNAVAILABLE, downstream_dir
from ebt.data.pairs import Pair, encode_pairs, rows_split
from ebt.data.tokens import DOCUMENT_SEPARATOR, TokenSplit
from ebt.distributed import Distributed, pick_device
from ebt.errors import ConfigError, EBTError
from ebt.evaluate import Scoring, WindowScores, evaluate
from ebt.generate import generate
from ebt.models import is_energy_based
from ebt.options import ThinkingOptions
from ebt.precision import check_precision
from ebt.runs import load_run

THINKING = tuple(f.name for f in fields(ThinkingOptions))  # the thinking options, as declared (`ebt.options`)
MODEL_ARGS = ("pretrained", *THINKING, "batch_size", "device", "precision", "seed", "max_length")
# What lm_eval itself passes to a model beside --model_args: its --batch_size, --max_batch_size, --device.
HARNESS_ARGS = ("batch_size", "max_batch_size", "device")
GENERATION_ARGS = ("until", "max_gen_toks", "do_sample", "temperature")
MAX_GEN_TOKS = 256  # lm_eval's default for a task that sets none
MAX_BATCH = 65536

# One task template per downstream set (DOWNSTREAM_SETS), and their group.
GROUP = "ebt_downstream"
DATA_DIR = "${EBT_DOWNSTREAM_DIR}"  # the templates' placeholder, replaced by `write_tasks`


class EBTLM(LM):
    """A trained text run (EBT or Transformer++) as an lm_eval model.

    pretrained: the run directory (`ebt train --out`).
    **thinking: the EBT's thinking, the fields of `ThinkingOptions` (steps=3, samples=2, momentum=0.5,
        …; THINKING); a Transformer++ run refuses them.
    batch_size: windows per forward pass (16, as `ebt eval`). device: 'auto' (CUDA when available),
        'cpu', 'cuda', 'cuda:N'. precision: 'fp32', 'bf16', 'fp16' (CUDA), or None for the run's
        train.precision. seed: of the EBT's initial candidates and of sampling.
    max_length: the most tokens read for one prediction (≤ the run's model.context_len, its default).

    Raises ConfigError naming the argument, its value and what is allowed; CheckpointError for a
    run directory that cannot be loaded. lm_eval builds it with `create_from_arg_string`
    ("pretrained=runs/ebt,steps=3") or `create_from_arg_obj`, which also reject unknown keys.
    """

    def __init__(self, pretrained: str | Path | None = None, *, batch_size: int | str = 16, device: str = "auto",
                 precision: str | None = None, seed: int = 0, max_length: int | None = None,
                 **thinking: Any) -> None:
        super().__init__()
        if pretrained is None or pretrained == "":
            raise ConfigError("model_args needs pretrained=RUN_DIR, a run directory of `ebt train`")
        try:
            self.options = ThinkingOptions.of(**thinking)
        except ConfigError as error:
            raise ConfigError(f"model_args: {error}", field=error.field) from None
        if isinstance(batch_size, str) and batch_size.isdigit():  # lm_eval's --batch_size is a string
            batch_size = int(batch_size)
        check_int("model_args batch_size", batch_size, 1, MAX_BATCH, note="; ebt has no automatic batch size ('auto')",
                  field="batch_size")
        check_int("model_args seed", seed, 0, 2**63 - 1, field="seed")
        if not isinstance(device, str):
            raise ConfigError(f"model_args device = {device!r} is not allowed; it must be 'auto', 'cpu', 'cuda' or "
                              "'cuda:N'")
        self._device = pick_device(device, Distributed())[0]
        self.run = load_run(Path(str(pretrained)), self._device)
        config = self.run.config
        if config.model.task != "text":
            raise ConfigError(f"pretrained = {str(pretrained)!r} is a {config.model.task} run; "
                              "lm-evaluation-harness scores text runs")
        if not is_energy_based(self.run.model) and self.options.given():
            error = self.options.refused_by("a Transformer++")
            raise ConfigError(f"{error} (pretrained = {str(pretrained)!r} is a Transformer++ run)")
        if precision is None:
            check_precision(config.train.precision, self._device,
                            f"{self.run.path}'s train.precision (the default of model_args precision)")
            precision = config.train.precision
        check_precision(precision, self._device, "model_args precision")
        context_len = config.model.context_len
        check_int("model_args max_length", context_len if max_length is None else max_length, 1, context_len,
                  note=" (the run's model.context_len)", field="max_length")
        self.model, self.tokenizer = self.run.model, self.run.tokenizer
        self.batch_size, self.seed, self.precision = batch_size, seed, precision
        self.max_length = context_len if max_length is None else max_length
        self.window = self.max_length + 1  # tokens: max_length read, max_length predicted

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> EBTLM:
        """From --model_args "pretrained=runs/ebt,steps=3" (lm_eval's parser types the values)."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> EBTLM:
        """From model_args as a dict. `additional_config` is what lm_eval adds (its --batch_size,
        --device, --max_batch_size); a key given in model_args wins, since lm_eval's defaults
        (batch size 1, device 'cuda:0' from its command line) cannot be told from a choice.
        ConfigError for a key not in MODEL_ARGS."""
        unknown = sorted(set(arg_dict) - set(MODEL_ARGS))
        if unknown:
            raise ConfigError(f"unknown model_args {', '.join(map(repr, unknown))} for --model ebt; "
                              f"allowed: {', '.join(MODEL_ARGS)}")
        given = {k: v for k, v in (additional_config or {}).items() if v is not None}
        unknown = sorted(set(given) - set(HARNESS_ARGS))
        if unknown:
            raise ConfigError(f"lm_eval passed {', '.join(map(repr, unknown))}, which --model ebt does not take; "
                              f"it takes {', '.join(HARNESS_ARGS)} besides model_args")
        given.pop("max_batch_size", None)  # only for --batch_size auto, which ebt does not offer
        return cls(**{**given, **arg_dict})

    def get_model_info(self) -> dict[str, Any]:
        """What lm_eval records in its results' config."""
        return {"run": str(self.run.path), "kind": self.run.config.model.kind, "step": self.run.step,
                "thinking": self.options.given(), "precision": self.precision, "max_length": self.max_length,
                "seed": self.seed, "batch_size": self.batch_size}

    # --- The three requests ----------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """For each request, args (context, continuation) → (log p(continuation | context) in nats,
        whether greedy decoding from the context gives the continuation), in request order.

        An empty context is read as "\\n\\n"; an empty continuation scores (0.0, True). A context
        that does not fit keeps its last tokens; a continuation longer than max_length tokens is
        scored on its first ones (UserWarning naming how many requests were cut). Each task's
        requests are scored apart (`_by_task`)."""
        pairs = [Pair(context or DOCUMENT_SEPARATOR, continuation, f"request {i + 1}")
                 for i, (context, continuation) in enumerate(r.args for r in requests)]
        results = [(0.0, True)] * len(pairs)
        cut, scored = 0, 0
        for group in _by_task(requests):
            group = [i for i in group if pairs[i].answer]
            if not group:
                continue
            encoded = encode_pairs([pairs[i] for i in group], self.tokenizer, self.window, "lm_eval requests",
                                   cut_prompts=True)
            cut, scored = cut + encoded.cut_answers, scored + len(group)
            windows = self._score(encoded.split)
            for i, log_likelihood, greedy in zip(group, windows.log_likelihood.tolist(), windows.greedy.tolist()):
                results[i] = (float(log_likelihood), bool(greedy))
        if cut:
            warnings.warn(f"{cut} of {scored} continuations do not fit the window ({self.max_length} tokens) beside "
                          "their context: each is scored on its first tokens only, so its log-likelihood covers "
                          "part of it", stacklevel=2)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        """For each request, args (text,) → log p(text | "\\n\\n") in nats, every token of the text
        predicted once (windows: `rolling_rows`); 0.0 for an empty text. Each task's requests are
        scored apart (`_by_task`)."""
        texts = [r.args[0] for r in requests]
        encode_batch = getattr(self.tokenizer, "encode_batch", None)
        ids = encode_batch(texts) if encode_batch is not None else [self.tokenizer.encode(t) for t in texts]
        separator = self.tokenizer.encode(DOCUMENT_SEPARATOR)
        totals = [0.0] * len(texts)
        for group in _by_task(requests):
            rows, owner = [], []
            for i in group:
                text_rows = rolling_rows(ids[i], separator, self.window)
                rows += text_rows
                owner += [i] * len(text_rows)
            if rows:
                windows = self._score(rows_split(rows, "lm_eval texts"))
                for i, log_likelihood in zip(owner, windows.log_likelihood.tolist()):
                    totals[i] += float(log_likelihood)
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """For each request, args (context, gen_kwargs) → the text generated after the context, cut
        before the first of gen_kwargs' `until` strings (a string or a list) that appears.

        gen_kwargs: until, max_gen_toks (new tokens at most; 256), do_sample (False: greedy),
        temperature (of sampling, with do_sample; 1.0). The context keeps its last max_length
        tokens; an empty one is "\\n\\n". ConfigError for any other gen_kwargs key or a bad value."""
        texts = []
        for request in requests:
            context, gen_kwargs = request.args
            until, max_new_tokens, temperature = _generation(gen_kwargs)
            prompt = self.tokenizer.encode(context or DOCUMENT_SEPARATOR)[-self.max_length:]

            def stop(new: list[int]) -> bool:
                text = self.tokenizer.decode(new)
                return any(s in text for s in until)

            new = generate(self.model, prompt, max_new_tokens, temperature=temperature, seed=self.seed,
                           device=self._device, options=self.options, precision=self.precision, stop=stop)
            text = self.tokenizer.decode(new)
            text = text[:min([text.find(s) for s in until if s in text], default=len(text))]
            self.cache_hook.add_partial("generate_until", request.args, text)
            texts.append(text)
        return texts

    @functools.cached_property
    def scoring(self) -> Scoring:
        """How every request is scored: the device, precision, batch size and seed given (checked
        when the model was made)."""
        return Scoring(self._device, self.precision, self.batch_size, self.seed)

    def _score(self, split: TokenSplit) -> WindowScores:
        """`evaluate`'s records of a padded split's windows, one per row (log_likelihood in nats, greedy)."""
        return evaluate(self.model, split, self.options, scoring=self.scoring)


# Registered by name ("module:class"), which lm_eval imports on first use: `python -m ebt.harness`
# runs this file as __main__ and lm_eval imports it again as ebt.harness (for `answer_metrics`);
# both register this same entry, where two class objects would clash.
model_registry.register("ebt", target="ebt.harness:EBTLM")


def _by_task(requests: Sequence[Any]) -> list[list[int]]:
    """Request indices grouped by task (lm_eval's `Instance.task_name`), in order. Each group is
    scored by its own `evaluate` call: an EBT's initial candidates are drawn batch by batch, so a
    task's figures would otherwise depend on the tasks run beside it. With them apart, a task's
    loglikelihoods are those of `ebt eval --data` on its pairs at the same seed and batch size."""
    groups: dict[Any, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(getattr(request, "task_name", None), []).append(i)
    return list(groups.values())


def rolling_rows(ids: Sequence[int], context: Sequence[int], window: int) -> list[tuple[list[int], list[int]]]:
    """A text's token ids → rows (read, scored) of at most `window` tokens that score every id once.

    The first row reads `context` (its last window − 1 tokens at most) and scores the ids that fit
    after it; each later row scores the next window − 1 ids (fewer in the last) and reads the
    window − len(scored) ids before them. Joined, the scored parts are `ids`; none for no ids."""
    context = list(context)[-(window - 1):]
    full = context + list(ids)
    rows: list[tuple[list[int], list[int]]] = []
    start, end = len(context), min(len(full), window)
    while start < len(full):
        rows.append((full[max(0, end - window):start], full[start:end]))
        start, end = end, min(len(full), end + window - 1)
    return rows


def _generation(gen_kwargs: dict[str, Any] | None) -> tuple[list[str], int, float]:
    """A request's gen_kwargs → (stop strings, new tokens at most, temperature: 0 for greedy)."""
    gen_kwargs = dict(gen_kwargs or {})
    unknown = sorted(set(gen_kwargs) - set(GENERATION_ARGS))
    if unknown:
        raise ConfigError(f"gen_kwargs {', '.join(map(repr, unknown))} are not supported by --model ebt; "
                          f"it takes {', '.join(GENERATION_ARGS)}")
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ConfigError(f"gen_kwargs until = {gen_kwargs['until']!r} is not allowed; it must be a string or a list "
                          "of strings")
    until = [s for s in until if s]
    max_new_tokens = gen_kwargs.get("max_gen_toks", MAX_GEN_TOKS)
    check_int("gen_kwargs max_gen_toks", max_new_tokens, 0, 1_000_000, field="max_gen_toks")
    do_sample = gen_kwargs.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise ConfigError(f"gen_kwargs do_sample = {do_sample!r} is not allowed; it must be true or false")
    temperature = gen_kwargs.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ConfigError(f"gen_kwargs temperature = {temperature!r} is not allowed; it must be a finite number ≥ 0")
    return until, max_new_tokens, float(temperature) if do_sample else 0.0


# --- Task metrics and task files ---------------------------------------------------------------


def answer_metrics(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """The downstream tasks' `process_results`: one loglikelihood result (log p(answer | prompt)
    in nats, greedy) → `acc` (the share of answers greedy decoding gives, `ebt eval`'s exact_match),
    and per byte of the answers' UTF-8 text, tokenizer-free: `byte_perplexity` (exp(−Σ log p /
    Σ bytes)), `bits_per_byte`. (lm_eval's own `perplexity` is per answer, exp(−mean log p): for
    answers of hundreds of tokens, a number of hundreds of digits; the per-token figure is `ebt
    eval RUN --data SET.jsonl`'s.)"""
    (log_likelihood, greedy), = results
    size = len(doc["answer"].encode("utf-8"))
    return {"acc": int(greedy), "byte_perplexity": (log_likelihood, size), "bits_per_byte": (log_likelihood, size)}


def write_tasks(out: str | Path, data_dir: str | Path | None = None) -> tuple[list[Path], list[Path], list[str]]:
    """Write the lm_eval task YAMLs of the downstream sets (tasks `ebt_<set>`, group "ebt_downstream")
    into `out`, each reading `<data_dir>/<set>.jsonl`: `data_dir` made absolute, by default
    `ebt.data.downstream.downstream_dir()` ($EBT_DOWNSTREAM_DIR, else ~/.cache/ebt/downstream).
    A set whose file is not there and that no registry serves (`ebt.data.downstream.UNAVAILABLE`)
    has its task written but is left out of the group, which lm_eval would fail as a whole.

    Returns (the files written, the data files not there yet that `make downstream-data` installs,
    the sets left out of the group). Raises OSError when `out` cannot be written."""
    data_dir = _data_dir(data_dir)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    absent = [s for s in DOWNSTREAM_SETS if not (data_dir / f"{s}.jsonl").is_file()]
    left_out = [s for s in absent if s in UNAVAILABLE]
    written = []
    templates = resources.files("ebt") / "harness_tasks"
    for name in [f"ebt_{s}.yaml" for s in DOWNSTREAM_SETS] + [f"{GROUP}.yaml"]:
        # A JSON string's escapes are those of a double-quoted YAML string, where the templates put it.
        text = (templates / name).read_text(encoding="utf-8").replace(DATA_DIR, json.dumps(str(data_dir))[1:-1])
        if name == f"{GROUP}.yaml":
            text = "".join(line for line in text.splitlines(keepends=True)
                           if line.strip() not in {f"- ebt_{s}" for s in left_out})
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written, [data_dir / f"{s}.jsonl" for s in absent if s not in left_out], left_out


def _data_dir(data_dir: str | Path | None) -> Path:
    """The data folder the tasks read: `data_dir`, by default `downstream_dir()`, made absolute."""
    return Path(data_dir if data_dir is not None else downstream_dir()).expanduser().resolve()


# --- Command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ebt.harness tasks --out DIR [--data-dir DIR]`, or lm_eval's command line with the
    "ebt" model registered: `python -m ebt.harness --model ebt --model_args pretrained=RUN ...`.
    With --model ebt and no --device, the device is 'auto' (lm_eval's own default is cuda:0).
    Errors a user can fix print one line and exit with 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["tasks"]:
            return _tasks(argv[1:])
        cli_evaluate = _lm_eval("lm_eval.__main__").cli_evaluate
        if _option(argv, "--model", "-M") == "ebt" and _option(argv, "--device") is None:
            argv += ["--device", "auto"]
        saved, sys.argv = sys.argv, ["lm-eval", *argv]  # lm_eval's parser reads sys.argv
        try:
            cli_evaluate()
        finally:
            sys.argv = saved
        return 0
    except EBTError as error:
        print(f"python -m ebt.harness: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"python -m ebt.harness: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2


def _tasks(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebt.harness tasks",
                                     description="Write lm_eval task YAMLs for the downstream sets.")
    parser.add_argument("--out", type=Path, required=True, help="folder for the YAMLs (lm_eval --include_path)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder of <set>.jsonl (default: $EBT_DOWNSTREAM_DIR, else ~/.cache/ebt/downstream)")
    args = parser.parse_args(argv)
    written, missing, left_out = write_tasks(args.out, args.data_dir)
    grouped = [f"ebt_{s}" for s in DOWNSTREAM_SETS if s not in left_out]
    print(f"wrote {len(written)} task files to {args.out}: tasks {', '.join(f'ebt_{s}' for s in DOWNSTREAM_SETS)}, "
          f"group {GROUP} ({', '.join(grouped)})")
    print(f"run: python -m ebt.harness --model ebt --model_args pretrained=RUN_DIR --include_path {args.out} "
          f"--tasks {GROUP}")
    for name in left_out:  # one line each: `make downstream-data` cannot help
        print(f"warning: ebt_{name} is left out of group {GROUP}: {name}.jsonl is not in "
              f"{_data_dir(args.data_dir)} and `make downstream-data` cannot install it ({UNAVAILABLE[name]}); "
              "put a file from an earlier install there and write the tasks again", file=sys.stderr)
    if missing:
        print(f"warning: {len(missing)} data files are not there yet: {', '.join(map(str, missing))}; install the "
              "sets with `make downstream-data`", file=sys.stderr)
    return 0


def _option(argv: Sequence[str], *names: str) -> str | None:
    """The value of a command-line option (`--name VALUE` or `--name=VALUE`), None when absent."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


if __name__ == "__main__":
    sys.exit(main())
