"""The commands `ebt train | finetune | consolidate | eval | generate | denoise | prepare-data | downstream-data |
bench | scale run | scale fit`, on typed arguments: one module per family.

    train.py       train, finetune, consolidate   (ebt.train, ebt.sharded)
    evaluation.py  eval, and the suites' tables   (ebt.evaluate, ebt.suite)
    generation.py  generate: text, and video clips as PNG / GIF   (ebt.generate)
    images.py      denoise                  (ebt.denoise)
    data.py        prepare-data, downstream-data   (ebt.data.prepared, ebt.data.downstream)
    bench.py       bench                    (ebt.bench)
    scale.py       scale run, scale fit     (ebt.scaling)
    common.py      the device, the precision and the compile check every command shares

Each command is an argument class (a dataclass whose fields declare the command line's flags,
their defaults and help: `ebt.cli` builds its parser from them) and a function `*_command(args)`
that prints its report and returns the process's exit code. Each argument class checks its
values when it is made (ConfigError naming the field, the value and what is allowed, with the
field in `EBTError.field` for the command line to name its flag). Python code can call them
without argparse:

    from ebt.commands import EvalArgs, eval_command
    eval_command(EvalArgs(run=Path("runs/ebt"), options=ThinkingOptions(steps=4), json=True))

`eval`, `generate` and `denoise` run the model at `precision` (autocast: 'fp32', 'bf16', 'fp16' on
CUDA; `ebt.precision`), by default the one the run trained at (its config's train.precision);
`eval` and `generate` with `compile` run inference through torch.compile (`ebt.compiled`).
"""

from ebt.commands.bench import BenchArgs, bench_command
from ebt.commands.data import DownstreamDataArgs, PrepareDataArgs, downstream_data_command, prepare_data_command
from ebt.commands.evaluation import SUITES, EvalArgs, eval_command
from ebt.commands.generation import GenerateArgs, generate_command
from ebt.commands.images import DenoiseArgs, denoise_command
from ebt.commands.scale import ScaleFitArgs, ScaleRunArgs, scale_fit_command, scale_run_command
from ebt.commands.train import (ConsolidateArgs, FinetuneArgs, TrainArgs, consolidate_command, finetune_command,
                                train_command)

__all__ = [
    "BenchArgs", "ConsolidateArgs", "DenoiseArgs", "DownstreamDataArgs", "EvalArgs", "FinetuneArgs", "GenerateArgs", "PrepareDataArgs",
    "SUITES", "ScaleFitArgs", "ScaleRunArgs", "TrainArgs", "bench_command", "consolidate_command", "denoise_command",
    "downstream_data_command", "eval_command", "finetune_command", "generate_command", "prepare_data_command",
    "scale_fit_command", "scale_run_command", "train_command",
]
