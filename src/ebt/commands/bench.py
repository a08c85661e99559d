"""`ebt bench`: training step time, generation and memory of the EBT and the Transformer++ of one
size, measured side by side in one process (`ebt.bench`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ebt import bench
from ebt.checks import check_int
from ebt.commands.common import check_inference, compile_field, device_field, json_field, option, pick
from ebt.errors import ConfigError
from ebt.files import standard_json
from ebt.presets import PRESETS, preset

KINDS = ("text-ebt-", "text-ebt-s2-", "text-transformer-")  # the presets measured, each + size


@dataclass
class BenchArgs:
    """`ebt bench`: step times and ratios of the EBT and the Transformer++ of one size, side by side."""

    size: str = option("tiny", "model size of the text presets: tiny, 4xs, 3xs, xxs, ... (default tiny)",
                       flag="--preset", aliases=["--size"])
    repeats: int = option(10, "timed training steps per model")
    prompt_len: int = option(256, "prompt tokens of the timed generation")
    new_tokens: int = option(16, "tokens generated in the timed generation")
    memory: bool = option(True, "count the activation memory (--no-memory skips it)")
    json: bool = json_field()
    # The figures this project records are CPU figures; "auto" takes CUDA when there is one.
    device: str = device_field("cpu", "cpu (default: the recorded figures are CPU figures), auto, cuda, cuda:1, ...")
    precision: str = option("fp32", "fp32 (default) or bf16: autocast as train.precision; MFU is then against the "
                                    "device's bf16 matmul throughput")
    overrides: list[tuple[str, str]] = field(default_factory=list)  # applied to every kind's preset
    compile: bool = compile_field()

    def __post_init__(self) -> None:
        if f"text-ebt-{self.size}" not in PRESETS:
            sizes = sorted({name.rsplit("-", 1)[1] for name in PRESETS if name.startswith("text-ebt-")})
            raise ConfigError(f"size {self.size!r} is not a size of the text presets; known: {', '.join(sizes)}", field="size")
        for kind in KINDS:
            preset(kind + self.size).with_overrides(self.overrides)  # a ConfigError naming a bad override
        for key, _ in self.overrides:  # what bench would drop silently
            if key in ("train.precision", "train.device"):
                raise ConfigError(f"{key} is set by bench's own {key[6:]}; give it as {key[6:]}", field=key[6:])
            if key.partition(".")[0] in ("data", "text"):
                raise ConfigError(f"{key} does not apply to bench: it times random byte windows (V = 256), with "
                                  "no corpus or tokenizer; drop the override", field=key)
        check_int("repeats", self.repeats, 1, 10_000)
        check_int("prompt_len", self.prompt_len, 1, 1_000_000)
        check_int("new_tokens", self.new_tokens, 1, 1_000_000)
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision = {self.precision!r} is not allowed for bench; it must be 'fp32' or 'bf16' "
                              "(the figures bench records are fp32 and bf16 ones)",
                              field="precision")
        check_inference(self.device, compile=self.compile)


def bench_command(args: BenchArgs) -> int:
    result = bench.run(args.size, args.repeats, args.prompt_len, args.new_tokens, memory=args.memory,
                       device=pick(args.device), precision=args.precision, overrides=args.overrides,
                       compile=args.compile)
    print(standard_json(result) if args.json else bench.report(result))
    return 0
