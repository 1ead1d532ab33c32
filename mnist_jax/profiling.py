"""`python -m mnist_jax.profiling`: where a training step's time goes, for the same settings as `train` (e.g.
`--model lenet --batch-size 256`): one traced epoch of the run's member, its wall time shared out to the parts of the
step (the layers, pooling, activations, loss, optimizer, batch gathering), printed as a table.

The compiled program's instructions are timed by `jax.profiler` (XLA:CPU records every instruction it runs); each
instant of wall time is shared equally among the instructions running then, and each instruction belongs to the part
whose name scope (engine.train_step, models, cpu_conv) or Flax module its HLO metadata names. A fusion counts for the
part of its root instruction: a transpose fused into the next layer's input counts for that layer. Tracing slows
every instruction a little, so the parts are reported as shares of the traced step and scaled to the untraced one.
"""

from __future__ import annotations

import collections
import re
import tempfile
import time
from pathlib import Path
from typing import Sequence

import jax

from mnist_jax import cli, engine, settings
from mnist_jax.errors import UserError

# The parts of a step, in the order they are reported: name -> what its instructions' HLO op_name contains (the
# first part that matches wins; an instruction that matches none is "other": the loop, the epoch's order, copies).
PARTS = {
    "batch": "/batch/",
    "pooling": "/max_pool/",
    "activations": "/activation/",
    "conv1": "/Conv_0/",
    "conv2": "/Conv_1/",
    "dense": "/Dense_",
    "loss": "/loss/",
    "optimizer": "/optimizer/",
    "guard": "/guard/",
}


def part_of(op_name: str) -> str:
    """The PARTS name of an instruction from its HLO op_name (`jit(f)/while/body/.../Conv_0/dot_general`)."""
    for part, marker in PARTS.items():
        if marker in f"/{op_name}/":
            return part
    return "other"


def instruction_parts(hlo_text: str) -> dict[str, str]:
    """{HLO instruction name: part} for every instruction of a compiled module's text."""
    parts = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if match:
            op_name = re.search(r'op_name="([^"]*)"', line)
            parts[match.group(1)] = part_of(op_name.group(1) if op_name else "")
    return parts


def wall_shares(intervals) -> tuple[dict[str, float], float]:
    """[(start_ns, end_ns, name)] -> ({name: nanoseconds}, busy nanoseconds): each instant shared equally among the
    intervals open then; `busy` is the time at least one was."""
    edges = sorted([(start, 1, name) for start, end, name in intervals] +
                   [(end, -1, name) for start, end, name in intervals])
    shares: dict[str, float] = collections.Counter()
    running: collections.Counter = collections.Counter()
    busy, last = 0.0, edges[0][0] if edges else 0
    for t, change, name in edges:
        open_now = sum(running.values())
        if t > last and open_now:
            busy += t - last
            for other, count in running.items():
                shares[other] += (t - last) * count / open_now
        last = t
        running[name] += change
        if not running[name]:
            del running[name]
    return dict(shares), busy


def traced_intervals(trace_dir: Path, names) -> list[tuple[int, int, str]]:
    """The (start, end, instruction) of every event in the trace under `trace_dir` that is an instruction in
    `names`."""
    traces = sorted(trace_dir.rglob("*.xplane.pb"))
    if not traces:
        raise UserError(f"jax.profiler wrote no trace under {trace_dir}: is another profiler trace running?")
    profile = jax.profiler.ProfileData.from_file(str(traces[-1]))
    return [(event.start_ns, event.start_ns + event.duration_ns, event.name)
            for plane in profile.planes for line in plane.lines for event in line.events if event.name in names]


def profile_step(config: engine.Config, hyper: engine.Hyper, x, y, steps: int | None = None,
                 guarded: bool = False) -> dict:
    """Microseconds per step of each part of `config`'s training step (one member, `steps` steps of an epoch, the
    default a whole one), untraced step time shared out by the traced shares; with the traced and untraced step.
    `guarded` profiles the step with its per-step check instead (what a piece that went wrong runs again)."""
    steps = steps or config.steps_per_epoch

    def run(state):
        order = engine.epoch_order(config, state)
        return engine.train_steps(config, state, hyper, x, y, order, 0, steps, guarded=guarded)

    state = engine.initial_state(config, hyper)
    compiled = jax.jit(run).lower(state).compile()
    jax.block_until_ready(compiled(state))  # warm
    untraced = min(_seconds(compiled, state) for _ in range(3))
    parts = instruction_parts(compiled.as_text())
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        traced = _seconds(compiled, state)
        jax.profiler.stop_trace()
        shares, busy = wall_shares(traced_intervals(Path(tmp), parts))
    by_part = collections.Counter()
    for instruction, nanoseconds in shares.items():
        by_part[parts[instruction]] += nanoseconds
    scale = untraced / steps * 1e6 / (traced * 1e9)  # traced nanoseconds -> untraced microseconds per step
    order = [*PARTS, "other"]
    return {"model": config.model, "steps": steps, "step_us": untraced / steps * 1e6,
            "traced_step_us": traced / steps * 1e6, "idle_share": max(0.0, 1 - busy / (traced * 1e9)),
            "parts_us": {part: by_part[part] * scale for part in order if by_part[part]},
            "instructions": {name: ns * scale for name, ns in sorted(shares.items(), key=lambda kv: -kv[1])[:10]}}


def _seconds(compiled, state) -> float:
    started = time.perf_counter()
    jax.block_until_ready(compiled(state))
    return time.perf_counter() - started


def table(profile: dict) -> str:
    """A markdown table of a profile_step result: each part's microseconds per step and share."""
    total = profile["step_us"]
    lines = [f"| {profile['model']} step part | µs per step | share |", "| --- | --- | --- |"]
    for part, us in profile["parts_us"].items():
        lines.append(f"| {part} | {us:.0f} | {us / total:.0%} |")
    lines.append(f"| idle (no instruction running: the loop's own work, dispatch) | "
                 f"{profile['idle_share'] * total:.0f} | {profile['idle_share']:.0%} |")
    lines.append(f"| whole step (untraced; traced {profile['traced_step_us']:.0f} µs) | {total:.0f} | 100% |")
    return "\n".join(lines)



def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.Parser(prog="python -m mnist_jax.profiling", description=__doc__.split(":", 1)[1].split("\n")[0])
    cli.add_settings(parser, "train")
    values = cli.parse(parser, argv)
    cli.start(values)
    _, splits, _ = cli.load_data(values)
    config = settings.config(values, len(splits["train"][1]))
    profile = profile_step(config, settings.hyper(settings.member(values, config)), *jax.device_put(splits["train"]))
    print(table(profile))
    return 0


if __name__ == "__main__":
    cli.run(main)
