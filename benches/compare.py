"""Step time per element of every rule, beside PyTorch's best CPU optimizer and the memory
bandwidth bound, measured in one run; prints the README's Performance table.

    python3 -m venv venv && venv/bin/pip install torch
    venv/bin/python benches/compare.py            # all rows (a few minutes)
    venv/bin/python benches/compare.py --quick    # Adam only
    venv/bin/python benches/compare.py --rules adamw,nadam
    venv/bin/python benches/compare.py --model gpt2-small   # a model's parameter list
    venv/bin/python benches/compare.py --rules adam,adamw --state 8bit
    venv/bin/python benches/compare.py --rules adamw --state 8bit --torchao

``--state bf16|8bit`` keeps this crate's state in low precision (``--state f32``, the
default, keeps it in the element type), against PyTorch's fused f32 step all the same: the
table's bytes column is what each step of this crate moves per element. ``--torchao`` (with
``--state 8bit``, for ``adam`` and ``adamw``; needs ``pip install torchao``) adds a column
for torchao's ``Adam8bit``/``AdamW8bit`` with blocks of 256, the reference implementation of
the 8-bit format, timed the same way.

For each rule, element type, size and thread count it runs this crate's
`examples/throughput.rs` (built with `--features rayon`) and the same steps in PyTorch
(`fused=True` where PyTorch has a fused CPU kernel, `foreach=True` otherwise), alternating
the two `--repeats` times and keeping each side's best median, so that load from other
processes hits both alike. Both time the median of `--steps` steps after one warm-up step,
over one tensor, with the gradient fixed.

The bound is the bytes a step must move (parameter and state read and written, gradient
read) divided by the bandwidth of a plain copy of 64M f32 elements split over the same
number of threads (`throughput --optimizer copy`; bytes read plus bytes written per second,
the best of three).

`--model gpt2-small|small40` times f32 Adam over a model's parameter list instead: the
crate's `step_all` (`throughput --model`) and its `step_flat` of the same tensors kept in one
`FlatParams` block (`throughput --model … --placement flat`) against
`torch.optim.Adam(params, fused=True)`, one multi-tensor step over the same tensors, with the
same alternation.
"""

import argparse
import os
import statistics
import subprocess
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
EXAMPLE = os.path.join(TARGET, "release", "examples", "throughput")

# name: (number of state buffers, PyTorch optimizer factory)
RULES = {
    "sgd": (0, lambda p: torch.optim.SGD([p], lr=0.01, fused=True)),
    "momentum": (1, lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9, fused=True)),
    "nesterov": (
        1,
        lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9, nesterov=True, fused=True),
    ),
    "adagrad": (1, lambda p: torch.optim.Adagrad([p], lr=0.01, fused=True)),
    "adadelta": (2, lambda p: torch.optim.Adadelta([p], foreach=True)),
    "rmsprop": (1, lambda p: torch.optim.RMSprop([p], lr=0.001, foreach=True)),
    "adam": (2, lambda p: torch.optim.Adam([p], fused=True)),
    "adamw": (2, lambda p: torch.optim.AdamW([p], fused=True)),
    "adamax": (2, lambda p: torch.optim.Adamax([p], foreach=True)),
    "nadam": (2, lambda p: torch.optim.NAdam([p], foreach=True)),
    "radam": (2, lambda p: torch.optim.RAdam([p], foreach=True)),
}
DTYPES = {"f32": torch.float32, "f64": torch.float64}
KIND = {"sgd": "fused", "momentum": "fused", "nesterov": "fused", "adagrad": "fused",
        "adam": "fused", "adamw": "fused", "adadelta": "foreach", "rmsprop": "foreach",
        "adamax": "foreach", "nadam": "foreach", "radam": "foreach"}


def model_shapes(model):
    """The parameter shapes of `model`, as `throughput --model` steps them."""
    if model == "small40":
        return [shape for _ in range(20) for shape in ([256, 256], [256])]
    d = 768
    block = [[d], [d], [d, 3 * d], [3 * d], [d, d], [d], [d], [d], [d, 4 * d], [4 * d],
             [4 * d, d], [d]]
    return [[50257, d], [1024, d]] + block * 12 + [[d], [d]]


def torch_model_ns_per_elem(model, threads, steps):
    torch.set_num_threads(threads)
    params = []
    for i, shape in enumerate(model_shapes(model)):
        numel = 1
        for n in shape:
            numel *= n
        p = values(numel, i, torch.float32).reshape(shape).requires_grad_()
        p.grad = values(numel, i + 7, torch.float32).reshape(shape) * 1e-3
        params.append(p)
    opt = torch.optim.Adam(params, fused=True)
    opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e9 / sum(p.numel() for p in params)


def run_example(*args):
    """The `key=value` fields of the last line `throughput` prints when run with `args`."""
    out = subprocess.run(
        [EXAMPLE, *map(str, args)], check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    return dict(word.split("=") for word in out.split() if "=" in word)


def rust_model_ns_per_elem(model, threads, steps, placement="vec"):
    fields = run_example("--model", model, "--steps", steps, "--threads", threads,
                         "--placement", placement)
    return float(fields["ns_per_elem"])


def compare_model(model, threads, repeats, steps):
    shapes = model_shapes(model)
    numel = sum(torch.Size(shape).numel() for shape in shapes)
    print(f"\n{model}: {len(shapes)} tensors, {numel} parameters, f32 Adam\n")
    print("| model | threads | this crate ns/elem (step_all) | this crate ns/elem (step_flat) "
          "| PyTorch ns/elem (fused) | ratio (step_all) | ratio (step_flat) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in threads:
        ours, flat, theirs = [], [], []
        for _ in range(repeats):
            ours.append(rust_model_ns_per_elem(model, t, steps))
            flat.append(rust_model_ns_per_elem(model, t, steps, "flat"))
            theirs.append(torch_model_ns_per_elem(model, t, steps))
        ours, flat, theirs = min(ours), min(flat), min(theirs)
        print(f"| {model} | {t} | {ours:.3f} | {flat:.3f} | {theirs:.3f} | {ours / theirs:.2f} "
              f"| {flat / theirs:.2f} |", flush=True)


def values(numel, seed, dtype):
    i = torch.arange(numel, dtype=torch.float64)
    return ((i + seed) * 0.618034).sin().to(dtype)


def step_ns_per_elem(make_optimizer, dtype, numel, threads, steps):
    """The median step time per element of the optimizer that `make_optimizer` makes for
    one tensor, after one warm-up step."""
    torch.set_num_threads(threads)
    p = values(numel, 0, DTYPES[dtype]).requires_grad_()
    p.grad = values(numel, 7, DTYPES[dtype]) * 1e-3
    opt = make_optimizer(p)
    opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e9 / numel


def torch_ns_per_elem(rule, dtype, numel, threads, steps):
    return step_ns_per_elem(RULES[rule][1], dtype, numel, threads, steps)


def torchao_ns_per_elem(rule, numel, threads, steps):
    """torchao's 8-bit Adam or AdamW, whose format this crate's 8-bit state follows."""
    from torchao.optim import Adam8bit, AdamW8bit

    optimizer = {"adam": Adam8bit, "adamw": AdamW8bit}[rule]
    return step_ns_per_elem(lambda p: optimizer([p], block_size=256), "f32", numel, threads,
                            steps)


def rust_step(rule, dtype, numel, threads, steps, tensors=1, state="f32"):
    """This crate's (ns per element, bytes moved per element) of a step."""
    fields = run_example("--optimizer", rule, "--dtype", dtype, "--numel", numel,
                         "--steps", steps, "--threads", threads, "--tensors", tensors,
                         "--state", state)
    return float(fields["ns_per_elem"]), float(fields["bytes_per_elem"])


def rust_ns_per_elem(rule, dtype, numel, threads, steps, tensors=1):
    return rust_step(rule, dtype, numel, threads, steps, tensors)[0]


def copy_gbps(threads, numel=1 << 26):
    """Bytes read plus written per second by a large f32 copy (this crate's example)."""
    fields = run_example("--optimizer", "copy", "--numel", numel, "--steps", 10,
                         "--threads", threads)
    return float(fields["gbps"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Adam only")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rule names")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--model", choices=["gpt2-small", "small40"],
                        help="time Adam over this model's parameter list instead")
    parser.add_argument("--state", default="f32", choices=["f32", "bf16", "8bit"],
                        help="how this crate keeps its state (f32 element types only)")
    parser.add_argument("--torchao", action="store_true",
                        help="with --state 8bit: add torchao's 8-bit Adam/AdamW")
    args = parser.parse_args()
    if args.torchao and (args.state != "8bit" or set(args.rules.split(",")) - {"adam", "adamw"}):
        parser.error("--torchao needs --state 8bit and --rules adam and/or adamw")
    subprocess.run(
        ["cargo", "build", "--release", "--features", "rayon", "--example", "throughput"],
        cwd=ROOT, check=True,
    )
    threads = [int(t) for t in args.threads.split(",")]
    if args.model:
        return compare_model(args.model, threads, args.repeats, args.steps)
    bandwidth = {t: max(copy_gbps(t) for _ in range(3)) for t in threads}
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
               if line.startswith("model name"))
    print(f"\nCPU: {cpu}, {os.cpu_count()} logical cores; torch {torch.__version__}")
    for t in threads:
        print(f"copy bandwidth, {t} thread(s): {bandwidth[t]:.1f} GB/s (read + write)")
    rules = args.rules.split(",")
    rows = [(r, "f32", n) for r in rules for n in (1 << 12, 1 << 16, 1 << 20, 1 << 24)]
    if args.state == "f32":
        rows += [(r, "f64", n) for r in rules for n in (1 << 20,)]
    if args.quick:
        rows = [row for row in rows if row[0] == "adam"]
    print()
    torchao = " torchao 8-bit ns/elem | crate / torchao |" if args.torchao else ""
    print("| rule | dtype | state | numel | threads | bytes/elem | this crate ns/elem "
          "| PyTorch ns/elem | ratio | bound ns/elem | crate / bound |" + torchao)
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
          + (" ---: | ---: |" if args.torchao else ""))
    for rule, dtype, numel in rows:
        # f64 rows (full-precision state only) come with --state f32.
        state = args.state if dtype == "f32" else "f32"
        for t in threads:
            ours, theirs, reference = [], [], []
            for _ in range(args.repeats):
                ns, bytes_per_elem = rust_step(rule, dtype, numel, t, args.steps, state=state)
                ours.append(ns)
                theirs.append(torch_ns_per_elem(rule, dtype, numel, t, args.steps))
                if args.torchao:
                    reference.append(torchao_ns_per_elem(rule, numel, t, args.steps))
            ours, theirs = min(ours), min(theirs)
            bound = bytes_per_elem / bandwidth[t]
            label = dtype if state == "f32" else state
            extra = f" {min(reference):.3f} | {ours / min(reference):.3f} |" if reference else ""
            print(f"| {rule} | {dtype} | {label} | {numel} | {t} | {bytes_per_elem:.2f} "
                  f"| {ours:.3f} | {theirs:.3f} ({KIND[rule]}) | {ours / theirs:.2f} "
                  f"| {bound:.3f} | {ours / bound:.2f} |{extra}", flush=True)
    print()
    print("| threads | 1 tensor of 1M, ns/elem | 1000 tensors of 1000 (step_all), ns/elem "
          "| per-tensor overhead |")
    print("| ---: | ---: | ---: | ---: |")
    for t in threads:
        one = min(rust_ns_per_elem("adam", "f32", 1000 * 1000, t, args.steps)
                  for _ in range(args.repeats))
        many = min(rust_ns_per_elem("adam", "f32", 1000, t, args.steps, tensors=1000)
                   for _ in range(args.repeats))
        print(f"| {t} | {one:.3f} | {many:.3f} | {(many - one) * 1000:.0f} ns |", flush=True)


if __name__ == "__main__":
    main()
