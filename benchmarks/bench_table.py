"""Markdown table of `ebt bench --json` results (benchmarks/results-*.json), for the docs.

    python benchmarks/bench_table.py benchmarks/results-tiny.json benchmarks/results-3xs.json
"""

import json
import sys


def main(paths: list[str]) -> None:
    rows = [json.load(open(p)) for p in paths]
    print("| size | batch × context | EBT S1 step | EBT S2 step | Transformer++ step | train_ratio (S1 / S2; FLOP model) "
          "| MFU EBT S1 / S2 / T++ | gen. ms/token cached / uncached (EBT; T++) | cache_speedup (EBT; T++) "
          "| thinking step / decode step | activations EBT S1 / T++ |")
    print("|---" * 11 + "|")
    for r in rows:
        ms = lambda k: f"{r[k] * 1e3:.0f} ms"  # noqa: E731
        print(f"| {r['size']} | {r['batch_size']} × {r['context_len']} | {ms('ebt_step_s')} | {ms('ebt_s2_step_s')} "
              f"| {ms('transformer_step_s')} | **{r['train_ratio']:.2f}×** / {r['train_ratio_s2']:.2f}×; {r['flops_ratio']:.2f}× "
              f"| {r['mfu_ebt']:.0%} / {r['mfu_ebt_s2']:.0%} / {r['mfu_transformer']:.0%} "
              f"| {r['ebt_cached_s_per_token'] * 1e3:.1f} / {r['ebt_uncached_s_per_token'] * 1e3:.1f}; "
              f"{r['transformer_cached_s_per_token'] * 1e3:.1f} / {r['transformer_uncached_s_per_token'] * 1e3:.1f} "
              f"| **{r['cache_speedup']:.1f}×**; {r['transformer_cache_speedup']:.1f}× "
              f"| {r['thinking_step_vs_decode_step']:.2f}× "
              f"| {r['ebt_activation_mib']:.0f} / {r['transformer_activation_mib']:.0f} MiB |")


if __name__ == "__main__":
    main(sys.argv[1:])
