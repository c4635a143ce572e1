#!/usr/bin/env python3
"""Reference fixtures for the replay harness (docs: CONFORMANCE.md).

How to run, from the repository root:

    python3 -m venv ref && ref/bin/pip install torch==2.15.0 optax==0.2.8 jax numpy schedulefree==1.4.1 \
        && ref/bin/python tests/reference/generate.py

It writes ten files next to this script (and overwrites them):

* ``pytorch.json``: trajectories computed by ``torch.optim`` (single-tensor
  code path, ``foreach=False``) for ``sgd``, ``momentum``, ``nesterov``,
  ``adagrad`` and ``rmsprop`` (both with ``"eps_placement": "outside"``,
  PyTorch's convention), ``adadelta`` and ``adam``, in f64 and f32, 120 steps.
* ``seed.json``: trajectories computed independently with numpy, in the case's
  dtype, straight from the seed formulas (the seed's optimizers.md, with the
  eq. 11 typo fixed: Adadelta's second average is over the squared update
  Δθ²): the same seven optimizers, ``adagrad``/``rmsprop`` with eps inside the
  square root (the crate's default placement), ``nesterov`` run in the seed's
  own look-ahead form and recorded as Θ = θ − γv.  Plus a few two-step cases
  whose numbers are checked by hand below (HAND_CASES).
* ``pytorch_extensions.json``: trajectories computed by ``torch.optim``
  (``foreach=False``) for every option beyond the seed (CONFORMANCE.md,
  "Extensions beyond the seed": weight_decay, maximize, dampening, lr_decay,
  initial_accumulator_value, RMSprop momentum and centered, amsgrad,
  momentum_decay, decoupled_weight_decay), each alone and in combination, and
  for the rules ``adamw``, ``adamax``, ``nadam``, ``radam``, in f64 and f32,
  60 steps (EXTENSION_CASES).  PyTorch runs each case with the default dtype
  set to the case's dtype, so that its per-tensor scalar state (the step
  count, NAdam's ``mu_product``) is f64 in an f64 case.
* ``pytorch_training.json``: the training loop around the rules, computed by
  PyTorch: cases with a ``schedule`` (torch.optim.lr_scheduler) or a
  ``clip`` (torch.nn.utils.clip_grad_value_ / clip_grad_norm_) key, on the
  seed optimizers, in f64 and f32, 60 steps (TRAINING); and, under
  ``"schedules"``, the learning rates PyTorch's schedulers print for two
  groups over 60 steps (SCHEDULES: single, ChainedScheduler, SequentialLR;
  PLATEAUS: ReduceLROnPlateau fed a metric sequence), each entry
  ``{"name", "plan", "schedules", "milestones", "base_lrs", "lrs": [[group
  rates of step 1], ...]}`` (plateau entries: ``"plateau"`` settings and
  ``"metrics"`` instead of schedules).
* ``pytorch_defaults.json``: every numeric and boolean constructor default of
  ``SGD``, ``Adagrad``, ``Adadelta``, ``RMSprop``, ``Adam``, ``AdamW``,
  ``Adamax``, ``NAdam`` and ``RAdam``, read from their signatures (betas as
  ``beta1``, ``beta2``); ``--only defaults`` writes just this file.
* ``rules_v2.json`` (``--only rules_v2`` writes just this file): the rules
  of CONFORMANCE.md "Rules v2" with their reference semantics, in f64 and
  f32, 60 steps (V2_CASES): ``muon`` (torch.optim.Muon, its Newton–Schulz
  iteration run in the parameter's dtype instead of bfloat16, see
  muon_ns_in_param_dtype), ``adafactor``, ``asgd`` (the parameter, not its
  average) and ``rprop`` (torch.optim, ``foreach=False``), ``lamb`` and
  ``lion`` (optax.lamb, optax.lion, through optax.partition over the groups,
  eager; f64 cases run in a worker process with ``jax_enable_x64`` on, f32
  cases in one with it off, so that optax computes in the case's dtype), and
  per-group rules: ``torch-adamw-muon-groups`` (torch AdamW for the default
  group, torch Muon for group "hidden") and ``optax-lion-lamb-groups`` (lion,
  lamb for group "g").  A group's ``"optimizer"`` key names its rule; the
  case's ``hyper`` applies to groups of the case's rule only.  The defaults
  (RULES_V2) are checked against torch's and optax's signatures (optax's
  learning rate has no default).  After writing, every case is replayed by
  numpy transcriptions of the rules (NumpyV2) and the differences printed,
  with the share of the CONFORMANCE tolerance they use (informational).
* ``schedules_v2.json`` (``--only schedules_v2`` writes just this file): the
  schedules of CONFORMANCE.md "Rules v2" → "More schedules" and SWALR.  Under
  ``"schedules"``, the rates PyTorch's schedulers set for three groups of
  different base rates (V2_BASE_LRS) over V2_SCHEDULE_STEPS steps, f64
  (V2_SCHEDULES): MultiStepLR, ConstantLR, PolynomialLR, CyclicLR in every
  mode, OneCycleLR with cosine and linear annealing and three phases, per-group
  lists, SWALR, and combinations in the case's ``schedule`` key
  (``{"kind": "sequential", ...}``, ``{"kind": "chained", ...}``, schedulers
  built in list order); each entry ``{"name", "rule", "schedule", "base_lrs",
  "lrs": [[group rates after construction], [after step 1], ...]}``, plus
  ``"momenta"`` (each group's SGD momentum or Adam beta1, same layout) where the
  schedule cycles momentum, on torch SGD(momentum=0.9) (``"rule": "momentum"``)
  or Adam (``"adam"``).  Under ``"cases"``, replay cases with such schedules,
  momentum cycling among them, in f64 and f32 (V2_TRAINING).  ``cycle_momentum``
  is false unless given, as in the replay harness.
* ``averaging.json`` (``--only averaging`` writes just this file): weight
  averaging and gradient accumulation.  ``parameters``: a sequence of 60
  parameter snapshots (torch Adam on quadratics) per dtype; ``averages``: what
  ``torch.optim.swa_utils.AveragedModel`` (SWA, ``get_ema_multi_avg_fn``, and
  the same lerp with TensorFlow's ``ExponentialMovingAverage`` warm-up decay
  min(d, (1 + n)/(10 + n)) as ``multi_avg_fn``) and ``optax.ema`` (with and
  without debias, and over f32 parameters with ``accumulator_dtype`` float64)
  hold after each snapshot; ``multi_steps``: the parameters after each of 48
  micro-steps of ``optax.MultiSteps(optax.adam(...), every_k_schedule=k)``
  (k 4 and 3, the accumulator in the case's dtype) on micro-batch gradients
  a*theta - b_j.  A numpy transcription of the crate's arithmetic is compared
  with the averages and the differences printed (informational).
* ``lambda.json`` (``--only lambda`` writes just this file): LambdaLR and
  MultiplicativeLR, whose factors are closures: ``"lambdas"`` maps each name to
  its Python source (a function of ``step``, PyTorch's ``last_epoch``, or a list
  of one per group), which the Rust tests write out identically.  Under
  ``"schedules"``, entries like those of schedules_v2.json (a schedule is
  ``{"kind": "lambda" | "multiplicative", "name": ...}``, alone or inside
  ``sequential`` and ``chained``), three groups (V2_BASE_LRS), 64 steps
  (LAMBDA_SCHEDULES).  Under ``"per_group"``, a schedule of its own for some of
  the groups (``"groups": [{"group": name, "schedule": ...}]``, the others
  keeping their rate), each computed independently by running that group's
  scheduler on an optimizer that has that group alone (LAMBDA_PER_GROUP), with
  ``"lrs"`` and ``"momenta"`` laid out as above.
* ``schedule_free.json`` (``--only schedule_free`` writes just this file):
  ``schedulefree`` 1.4.1's ``AdamWScheduleFree`` and ``SGDScheduleFree``
  (defaults, and every key changed with per-group rates and warmup and a
  frozen group), 60 steps in f64 and f32 over tensors of 0 to 3 axes; the
  trajectory is the parameter in train mode (y), and each entry's ``eval``
  holds x (the parameter after ``optimizer.eval()``) after the steps listed.
* ``prodigy.json`` (``--only prodigy`` writes just this file): prodigyopt
  1.1.2's ``Prodigy``, 60 steps in f64 and f32 over tensors of 0 to 3 axes (two
  column-major): defaults, decoupled and coupled decay, bias correction,
  safeguard_warmup, beta1 = 0, a finite growth_rate, d_coef, two extra groups
  (one at lr 0) and a cosine schedule; each entry's ``d`` holds the first
  group's d after every step.
* ``lbfgs.json`` (``--only lbfgs`` writes just this file): torch 2.15.0's
  ``LBFGS`` on Rosenbrock and a three-tensor quadratic (one column-major), with
  and without the strong-Wolfe line search, small and default history,
  ``max_iter`` 1 and 20 and early stops, in f64 and f32 (some cases f64 only:
  see the section); one case step is one ``step(closure)``.
* ``lowbit.json`` (``--only lowbit`` writes just this file; needs torchao 0.18.0):
  low-precision Adam moments, bf16 (round to nearest even) and torchao's 8-bit
  block-wise quantization (``quant_utils.py``: ``create_dynamic_map``,
  ``scale_tensor``, ``quantize_8bit_with_qmap``, ``dequant_with_qmap``; blocks of
  ``block_size`` 256, scale = the block's absmax clipped below at 1e-12; torchao
  quantizes tensors of at least ``min_numel`` 4096 elements, a multiple of 256).
  Keys: ``torch_version``, ``torchao_version``, ``block_size``, ``min_numel``,
  ``qmap_signed`` and ``qmap_unsigned`` (the 256 code values, f32; the signed
  map's lowest is -0.99296874, not -1); ``quantize``: ``[{"name", "signed",
  "input", "codes", "scales", "dequantized"}]`` (inputs of whole blocks: normals
  from 1e-8 to 1e3, zero blocks, a negative absmax, every code, the midpoints
  between codes and one ulp either side, values below the smallest code,
  subnormals, +inf, NaN, ±1); ``bf16``: ``{"input", "bits"}``, torch's
  ``.to(torch.bfloat16)`` as u16 bits (ties, one ulp off ties, subnormals, the
  largest f32 going to inf, ±0, ±inf, NaN, random values; torch writes NaN as
  0xffff); ``steps``: ``[{"name", "reference", "rule", "precision", "hyper":
  {"lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad"}, "shape", "param",
  "grads": [per step], "params": [after each step], "state": {buffer:
  {"codes", "scales"} | {"bits"}}}]``, 10 steps, the state after the last.  f32
  values are numbers (``float`` of the f32), non-finite ones the strings
  ``"nan"``, ``"inf"``, ``"-inf"``; codes are u8, bits u16, all row-major.
  ``"reference": "torchao"``: torchao's ``Adam8bit``/``AdamW8bit`` (block 256)
  with its math run eagerly (``step()`` under ``torch.compiler.set_stance(
  "force_eager")``, so ``single_param_adam`` runs uncompiled on torchao's own
  ``OptimState8bit`` state, one ATen CPU kernel per op: lerp by fused
  multiply-add, bias corrections ``1 - beta**step`` as f32 tensors, ``p - lr *
  (m / bc1) / denom``, exp_avg_sq by ``lerp(grad**2, 1 - beta2)``).  The run
  as torchao does it, compiled by Inductor (works on CPU here), is printed
  against it: its fused loop computes lerp as ``a + (b - a) * w`` without the
  fused multiply-add, so f32 moments and a few scales differ in the last bit and
  the parameters after 10 steps by up to 1e-4 lr (no code differed).  No amsgrad case: torchao 0.18 raises
  NotImplementedError there (``OptimState8bit`` lacks ``aten.maximum``).
  ``"reference": "torch_ops"``: the ops of torch.optim's ``_single_tensor_adam``
  (f32; AdamW ``p.mul_(1 - lr*wd)``, Adam ``grad.add(p, alpha=wd)``,
  ``exp_avg.lerp_``, ``exp_avg_sq.mul_(beta2).addcmul_``, bias corrections as
  Python floats, ``torch.maximum`` for amsgrad, ``addcdiv_``) on f32 moments
  that are stored after each step (int8: the quantization above, signed map for
  exp_avg, unsigned for exp_avg_sq and max_exp_avg_sq; bf16: ``.to(bfloat16)``)
  and loaded back (dequantized; ``.float()``) at the start of the next.  The
  int8 case of 4196 elements quantizes its last 100 as a block of their own,
  scale = their absmax: an extension, torchao keeps such tensors in f32.  To keep
  the file under 3 MB, the 4096-element cases have one or two nonzero blocks;
  the other blocks are zero in the parameter and every gradient (and stay zero).
  The gradients are normals times 10**U(-4, 1) per element times a per-step
  factor.  Printed, not written: distinct codes used, and for the torchao cases
  the difference of the last parameters of the compiled run, of the torch_ops
  run, and of the torch_ops run with exp_avg_sq by lerp.

The case files have the shape

    { "generator": "tests/reference/generate.py",
      "torch_version": "2.15.0",                      (pytorch*.json, rules_v2.json)
      "optax_version": "0.2.8",                       (rules_v2.json only)
      "cases": [ { "case": { ...replay-harness input case... },
                   "source": "pytorch" | "seed" | "optax",
                   "trajectory": { "<param>": [[row-major values after step 1],
                                               [after step 2], ...] } } ] }

Floats are written with Python's ``repr``, which round-trips exactly; f32
values (inputs of f32 cases as well as their trajectories) are f32 numbers
converted exactly to Python floats.

Cases, for each optimizer and each of f64/f32 (names ``torch-…`` in
pytorch.json, ``seed-…`` in seed.json), 120 steps each:

* ``<opt>-<dtype>-custom``: non-default hyperparameters and a group "slow"
  with its own overrides; params ``w`` (2x3 quadratic, layout "f"), ``s``
  (0-D sequence), ``r`` (Rosenbrock from (-1.2, 1), in group "slow") and
  ``t`` (shape [2] sequence of tiny gradients, where eps and its placement
  matter).
* ``<opt>-<dtype>-defaults``: no hyperparameters given (CONFORMANCE
  defaults; only ``eps_placement: outside`` for the PyTorch Adagrad/RMSprop);
  params ``w`` (2x3 quadratic, layout "c"), ``bias`` (0-D sequence), ``r``
  (Rosenbrock from (0.3, -0.4); in a group with a smaller lr for
  sgd/momentum/nesterov, whose default lr diverges there), ``k`` (2x1x2
  quadratic, layout "f"), ``t`` (tiny gradients).
* ``torch-<opt>-<options>-<dtype>`` (pytorch_extensions.json): params ``w``
  (2x3 quadratic, layout "f"), ``s`` (0-D sequence), ``k`` (2x1x2 quadratic,
  layout "f", in group "g" where the case has a group with overrides) and
  ``t`` (tiny gradients); cases with ``maximize`` use the quadratics negated,
  which have a maximum.

Everything is deterministic: inputs are hand-chosen, and the gradient
sequences come from numpy generators with fixed seeds.  The numpy side is
bit-reproducible; PyTorch's CPU kernels may round differently (last bit)
on another CPU, far inside the comparison tolerance.

After writing the files the script replays every case through the other
implementation where the formulas coincide (the numpy one on the PyTorch
cases, PyTorch on the seed cases it can express) and prints the largest
differences.  That cross-check is informational; it does not affect the files.

Cases of rules_v2.json, each in f64 and f32 (``<source>-<rule>-<tag>-<dtype>``,
source ``torch`` or ``optax``): ``defaults`` (no hyperparameters) and
``custom`` (every key changed, most rules with a group "g" overriding some)
for each rule; ``torch-muon-adjust-<adjust_lr_fn>`` for "original",
"match_rms_adamw" and "spectral_unclamped" on a tall 4x2 (layout "f") and a
wide 2x5 matrix; the two per-group cases.  Cases with ``maximize`` run on
the quadratics negated.  Muon takes only 2-D tensors; Adafactor gets 0-D,
1-D (unfactored), 2-D and 2x2x3 (factored, batched) tensors; a vector starting
at zeros checks Adafactor's eps2 floor and LAMB's trust ratio 1; Rprop's
custom case is checked to reach both step-size bounds.  The custom Adafactor
quadratic has its optimum out of reach: around an optimum Adafactor's
normalised steps keep bouncing with signs that follow rounding noise, and the
f32 trajectory would depend on the last bit of every operation.

Options: ``--no-torch`` regenerates seed.json only (no PyTorch needed);
``--only training|defaults|rules_v2|schedules_v2|averaging|lambda|schedule_free|prodigy|lbfgs|lowbit``
regenerates one file (``--training-only`` is ``--only training``);
``--any-torch`` accepts a PyTorch other than 2.15.0,
``--any-optax`` an optax other than 0.2.8.
"""

import argparse
import json
import math
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GENERATOR = "tests/reference/generate.py"
TORCH_VERSION = "2.15.0"
STEPS = 120

# CONFORMANCE.md defaults (not always PyTorch's: PyTorch's Adagrad eps is
# 1e-10, its RMSprop lr 0.01 and alpha 0.99, so torch always gets every value
# explicitly).
DEFAULTS = {
    "sgd": {"lr": 0.01},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.01, "eps": 1e-8, "eps_placement": "inside"},
    "adadelta": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
    "rmsprop": {"lr": 0.001, "rho": 0.9, "eps": 1e-8, "eps_placement": "inside"},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}

# CONFORMANCE.md "Extensions beyond the seed": PyTorch's options of the seed
# optimizers, with PyTorch's defaults, and the rules added beyond the seed.
# The seed formulas know none of these; run_seed refuses a case that changes one.
_ADAM_BASE = {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "maximize": False}
EXTENSION_KEYS = {
    "sgd": {"weight_decay": 0.0, "maximize": False},
    "momentum": {"dampening": 0.0, "weight_decay": 0.0, "maximize": False},
    "nesterov": {"weight_decay": 0.0, "maximize": False},
    "adagrad": {"weight_decay": 0.0, "lr_decay": 0.0, "initial_accumulator_value": 0.0,
                "maximize": False},
    "adadelta": {"weight_decay": 0.0, "maximize": False},
    "rmsprop": {"weight_decay": 0.0, "momentum": 0.0, "centered": False, "maximize": False},
    "adam": {"weight_decay": 0.0, "amsgrad": False, "maximize": False},
}
EXTENSION_RULES = {
    "adamw": {**_ADAM_BASE, "weight_decay": 0.01, "amsgrad": False},
    "adamax": {**_ADAM_BASE, "lr": 0.002},
    "nadam": {**_ADAM_BASE, "lr": 0.002, "momentum_decay": 0.004,
              "decoupled_weight_decay": False},
    "radam": {**_ADAM_BASE, "decoupled_weight_decay": False},
}
# CONFORMANCE.md "Rules v2": the rules of rules_v2.json with their defaults
# (torch's constructor defaults for muon, adafactor, asgd and rprop, optax's
# for lamb and lion, whose learning rate has no default there; checked
# against the signatures when rules_v2.json is written).
MUON_NS_COEFFICIENTS = [3.4445, -4.775, 2.0315]
RULES_V2 = {
    "muon": {"lr": 0.001, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True,
             "ns_coefficients": MUON_NS_COEFFICIENTS, "ns_steps": 5, "eps": 1e-7,
             "adjust_lr_fn": None},
    "adafactor": {"lr": 0.01, "beta2_decay": -0.8, "eps1": None, "eps2": 1e-3, "d": 1.0,
                  "weight_decay": 0.0, "maximize": False},
    "lamb": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "eps_root": 0.0,
             "weight_decay": 0.0},
    "lion": {"lr": 0.0001, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.001},
    "asgd": {"lr": 0.01, "lambd": 1e-4, "alpha": 0.75, "t0": 1e6, "weight_decay": 0.0,
             "maximize": False},
    "rprop": {"lr": 0.01, "etaminus": 0.5, "etaplus": 1.2, "step_size_min": 1e-6,
              "step_size_max": 50.0, "maximize": False},
}
ALL_DEFAULTS = {**{opt: {**h, **EXTENSION_KEYS[opt]} for opt, h in DEFAULTS.items()},
                **EXTENSION_RULES, **RULES_V2}

NP_DTYPE = {"f64": np.float64, "f32": np.float32}


# ---------------------------------------------------------------------------
# Case helpers
# ---------------------------------------------------------------------------

def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def group_rule(case, group_name):
    """The rule of a group: its own ``optimizer`` key, else the case's (per-group
    rules, CONFORMANCE.md "Rules v2")."""
    if group_name is None:
        return case["optimizer"]
    (group,) = [g for g in case.get("groups", []) if g["name"] == group_name]
    return group.get("optimizer", case["optimizer"])


def resolved_hyper(case, group_name):
    """Defaults of the group's rule, then the case's hyper (only for a group of
    the case's rule), then the group's overrides."""
    rule = group_rule(case, group_name)
    h = dict(ALL_DEFAULTS[rule])
    if rule == case["optimizer"]:
        for k, v in case.get("hyper", {}).items():
            if k not in h:
                raise ValueError(f"{case['name']}: key {k!r} not taken by {rule}")
            h[k] = v
    if group_name is not None:
        (group,) = [g for g in case.get("groups", []) if g["name"] == group_name]
        for k, v in group["hyper"].items():
            if k not in h:
                raise ValueError(f"{case['name']}: key {k!r} not taken by {rule}")
            h[k] = v
    return h


def check_case(case):
    resolved_hyper(case, None)  # validates the case's keys
    names = [p["name"] for p in case["params"]]
    assert len(set(names)) == len(names), case["name"]
    groups = {g["name"] for g in case.get("groups", [])}
    for p in case["params"]:
        n = numel(p["shape"])
        assert len(p["init"]) == n, (case["name"], p["name"])
        assert p.get("group") is None or p["group"] in groups, (case["name"], p["name"])
        obj = p["objective"]
        if obj["kind"] == "quadratic":
            assert len(obj["a"]) == n and len(obj["b"]) == n
        elif obj["kind"] == "sequence":
            assert len(obj["grads"]) >= case["steps"]
            assert all(len(row) == n for row in obj["grads"])
        elif obj["kind"] == "rosenbrock":
            assert p["shape"] == [2]
        else:
            raise ValueError(obj["kind"])
        resolved_hyper(case, p.get("group"))  # validates keys
        if group_rule(case, p.get("group")) == "muon":  # Muon takes matrices only
            assert len(p["shape"]) == 2, (case["name"], p["name"])


# ---------------------------------------------------------------------------
# Objectives (CONFORMANCE.md "Objectives"), evaluated in the case dtype on the
# flat row-major values of one tensor.
# ---------------------------------------------------------------------------

def gradient(param, theta, step, dtype):
    """Gradient of one tensor at flat row-major values ``theta`` (step is 1-based)."""
    T = NP_DTYPE[dtype]
    obj = param["objective"]
    kind = obj["kind"]
    if kind == "quadratic":
        a = np.array(obj["a"], dtype=T)
        b = np.array(obj["b"], dtype=T)
        g = a * theta - b  # two roundings, as the harness computes it
    elif kind == "sequence":
        g = np.array(obj["grads"][step - 1], dtype=T)
    elif kind == "rosenbrock":
        x, y = theta[0], theta[1]
        one, two, c200, c400 = T(1), T(2), T(200), T(400)
        d = y - x * x
        g = np.array([-two * (one - x) - c400 * x * d, c200 * d], dtype=T)
    else:
        raise ValueError(kind)
    assert g.dtype == T and g.shape == theta.shape
    return g


# ---------------------------------------------------------------------------
# Seed formulas, in numpy, in the case dtype.  One state object per tensor;
# hyperparameters are cast to the dtype once (as a generic Rust
# implementation over T would hold them).
# ---------------------------------------------------------------------------

class SeedTensor:
    def __init__(self, opt, hyper, init, dtype):
        T = NP_DTYPE[dtype]
        self.opt, self.T = opt, T
        self.h = {k: (v if isinstance(v, str) else T(v)) for k, v in hyper.items()}
        self.theta = np.array(init, dtype=T)  # the seed's θ
        z = np.zeros_like(self.theta)
        if opt in ("momentum", "nesterov"):
            self.v = z.copy()
        elif opt == "adagrad":
            self.G = z.copy()
        elif opt == "rmsprop":
            self.Eg = z.copy()
        elif opt == "adadelta":
            self.Eg, self.Ex = z.copy(), z.copy()
        elif opt == "adam":
            self.m, self.s, self.t = z.copy(), z.copy(), 0

    def stored(self):
        """What the harness stores and prints (Θ = θ − γv for nesterov)."""
        if self.opt == "nesterov":
            return self.theta - self.h["momentum"] * self.v
        return self.theta

    def step(self, g):
        T, h = self.T, self.h
        one = T(1)
        if self.opt == "sgd":
            # θ = θ − η g
            self.theta = self.theta - h["lr"] * g
        elif self.opt == "momentum":
            # (1) v = γ v + η g;  (2) θ = θ − v
            self.v = h["momentum"] * self.v + h["lr"] * g
            self.theta = self.theta - self.v
        elif self.opt == "nesterov":
            # (3) v = γ v + η ∇J(θ − γ v);  (4) θ = θ − v.  ``g`` was evaluated
            # at stored() = θ − γ v_{t-1}, the look-ahead point.
            self.v = h["momentum"] * self.v + h["lr"] * g
            self.theta = self.theta - self.v
        elif self.opt == "adagrad":
            # G = G + g²;  (7) θ = θ − η / √(G + ε) ⊙ g
            self.G = self.G + g * g
            if h["eps_placement"] == "inside":
                denom = np.sqrt(self.G + h["eps"])
            else:
                denom = np.sqrt(self.G) + h["eps"]
            self.theta = self.theta - h["lr"] * g / denom
        elif self.opt == "rmsprop":
            # (16) E[g²] = ρ E[g²] + (1 − ρ) g²;  (17) θ = θ − η / √(E[g²] + ε) g
            rho = h["rho"]
            self.Eg = rho * self.Eg + (one - rho) * (g * g)
            if h["eps_placement"] == "inside":
                denom = np.sqrt(self.Eg + h["eps"])
            else:
                denom = np.sqrt(self.Eg) + h["eps"]
            self.theta = self.theta - h["lr"] * g / denom
        elif self.opt == "adadelta":
            # (8) E[g²] = ρ E[g²] + (1 − ρ) g²
            # (14) Δθ = −RMS[Δθ]_{t−1} / RMS[g]_t g, RMS[x] = √(E[x²] + ε)
            # (11, fixed) E[Δθ²] = ρ E[Δθ²] + (1 − ρ) Δθ²
            # (15) θ = θ + η Δθ   (η = lr, 1 in the seed, applied after the averages)
            rho, eps = h["rho"], h["eps"]
            self.Eg = rho * self.Eg + (one - rho) * (g * g)
            delta = -(np.sqrt(self.Ex + eps) / np.sqrt(self.Eg + eps)) * g
            self.Ex = rho * self.Ex + (one - rho) * (delta * delta)
            self.theta = self.theta + h["lr"] * delta
        elif self.opt == "adam":
            # (18)-(22), t per tensor starting at 1
            b1, b2 = h["beta1"], h["beta2"]
            self.t += 1
            self.m = b1 * self.m + (one - b1) * g
            self.s = b2 * self.s + (one - b2) * (g * g)
            m_hat = self.m / (one - b1 ** self.t)
            s_hat = self.s / (one - b2 ** self.t)
            self.theta = self.theta - h["lr"] * m_hat / (np.sqrt(s_hat) + h["eps"])
        else:
            raise ValueError(self.opt)
        assert self.theta.dtype == T


def run_seed(case):
    dtype = case["dtype"]
    groups = [None] + [g["name"] for g in case.get("groups", [])]
    for g in groups:  # the seed formulas have none of PyTorch's options
        h = resolved_hyper(case, g)
        assert case["optimizer"] in DEFAULTS, case["name"]
        assert all(h[k] == v for k, v in EXTENSION_KEYS[case["optimizer"]].items()), case["name"]
    tensors = [SeedTensor(case["optimizer"], resolved_hyper(case, p.get("group")),
                          p["init"], dtype) for p in case["params"]]
    traj = {p["name"]: [] for p in case["params"]}
    for step in range(1, case["steps"] + 1):
        for p, st in zip(case["params"], tensors):
            st.step(gradient(p, st.stored(), step, dtype))
        for p, st in zip(case["params"], tensors):
            traj[p["name"]].append([float(x) for x in st.stored()])
    return traj


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

def torch_kwargs(opt, h):
    """Every PyTorch constructor argument spelled out (CONFORMANCE defaults)."""
    common = {"lr": h["lr"], "weight_decay": h["weight_decay"], "maximize": h["maximize"]}
    if opt in ("sgd", "momentum", "nesterov"):
        return {**common, "momentum": 0.0 if opt == "sgd" else h["momentum"],
                "dampening": h.get("dampening", 0.0), "nesterov": opt == "nesterov"}
    if opt == "adagrad":
        assert h["eps_placement"] == "outside", "torch Adagrad puts eps outside the sqrt"
        return {**common, "lr_decay": h["lr_decay"],
                "initial_accumulator_value": h["initial_accumulator_value"], "eps": h["eps"]}
    if opt == "rmsprop":
        assert h["eps_placement"] == "outside", "torch RMSprop puts eps outside the sqrt"
        return {**common, "alpha": h["rho"], "eps": h["eps"], "momentum": h["momentum"],
                "centered": h["centered"]}
    if opt == "adadelta":
        return {**common, "rho": h["rho"], "eps": h["eps"]}
    adam_like = {**common, "betas": (h["beta1"], h["beta2"]), "eps": h["eps"]}
    if opt in ("adam", "adamw"):
        return {**adam_like, "amsgrad": h["amsgrad"]}
    if opt == "adamax":
        return adam_like
    if opt == "nadam":
        return {**adam_like, "momentum_decay": h["momentum_decay"],
                "decoupled_weight_decay": h["decoupled_weight_decay"]}
    if opt == "radam":
        return {**adam_like, "decoupled_weight_decay": h["decoupled_weight_decay"]}
    raise ValueError(opt)


def torch_expressible(case):
    """Whether torch.optim computes exactly this case's update formula."""
    opt = case["optimizer"]
    if opt not in ("adagrad", "rmsprop"):
        return True
    groups = [None] + [g["name"] for g in case.get("groups", [])]
    return all(resolved_hyper(case, g)["eps_placement"] == "outside" for g in groups)


def run_torch(case):
    import torch

    opt = case["optimizer"]
    dtype = case["dtype"]
    T = NP_DTYPE[dtype]
    cls = {"sgd": torch.optim.SGD, "momentum": torch.optim.SGD,
           "nesterov": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
           "rmsprop": torch.optim.RMSprop, "adadelta": torch.optim.Adadelta,
           "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "adamax": torch.optim.Adamax, "nadam": torch.optim.NAdam,
           "radam": torch.optim.RAdam}[opt]
    # PyTorch keeps per-tensor scalar state (the step count, NAdam's mu_product)
    # in the default dtype: make that the case's dtype, as a user of that dtype
    # would, so that an f64 case has f64 scalars.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == "f64" else torch.float32)
    try:
        return _run_torch(case, torch, cls, T)
    finally:
        torch.set_default_dtype(default_dtype)


def _run_torch(case, torch, cls, T):
    opt = case["optimizer"]
    dtype = case["dtype"]

    def with_layout(t, layout):
        # Column-major storage for layout "f" (elementwise updates do not care,
        # but this is what the case describes).
        if layout == "f" and t.dim() >= 2:
            rev = list(reversed(range(t.dim())))
            t = t.permute(rev).contiguous().permute(rev)
        return t

    tensors = []
    for p in case["params"]:
        t = torch.from_numpy(np.array(p["init"], dtype=T).reshape(p["shape"]))
        param = torch.nn.Parameter(with_layout(t, p.get("layout", "c")))
        tensors.append(param)

    group_names = [None] + [g["name"] for g in case.get("groups", [])]
    param_groups = []
    for gname in group_names:
        members = [t for p, t in zip(case["params"], tensors) if p.get("group") == gname]
        if members:
            param_groups.append({"params": members,
                                 **torch_kwargs(opt, resolved_hyper(case, gname))})
    optimizer = cls(param_groups, foreach=False,
                    **torch_kwargs(opt, resolved_hyper(case, None)))
    assert all(g["foreach"] is False for g in optimizer.param_groups)
    scheduler = torch_scheduler(optimizer, case.get("schedule"))

    def flat(t):
        return np.array(t.detach().numpy(), copy=True).reshape(-1)  # row-major

    traj = {p["name"]: [] for p in case["params"]}
    for step in range(1, case["steps"] + 1):
        for p, t in zip(case["params"], tensors):
            g = gradient(p, flat(t), step, dtype)
            t.grad = with_layout(torch.from_numpy(g.reshape(p["shape"])), p.get("layout", "c"))
        torch_clip(tensors, case.get("clip"))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for p, t in zip(case["params"], tensors):
            traj[p["name"]].append([float(x) for x in flat(t)])
    return traj


def torch_scheduler(optimizer, spec):
    """The PyTorch scheduler of a case's (or a schedule entry's) ``schedule`` key."""
    import torch

    if spec is None:
        return None
    S = torch.optim.lr_scheduler
    kind = spec["kind"]
    if kind == "step":
        return S.StepLR(optimizer, step_size=spec["step_size"], gamma=spec.get("gamma", 0.1))
    if kind == "exponential":
        return S.ExponentialLR(optimizer, gamma=spec["gamma"])
    if kind == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=spec["t_max"], eta_min=spec.get("eta_min", 0.0))
    if kind == "cosine_restarts":
        return S.CosineAnnealingWarmRestarts(optimizer, T_0=spec["t_0"], T_mult=spec.get("t_mult", 1),
                                             eta_min=spec.get("eta_min", 0.0))
    if kind == "linear":
        return S.LinearLR(optimizer, start_factor=spec.get("start_factor", 1.0 / 3),
                          end_factor=spec.get("end_factor", 1.0),
                          total_iters=spec.get("total_iters", 5))
    if kind == "one_cycle":
        return S.OneCycleLR(optimizer, max_lr=spec["max_lr"], total_steps=spec["total_steps"],
                            pct_start=spec.get("pct_start", 0.3),
                            anneal_strategy=spec.get("anneal_strategy", "cos"),
                            cycle_momentum=spec.get("cycle_momentum", False),
                            base_momentum=spec.get("base_momentum", 0.85),
                            max_momentum=spec.get("max_momentum", 0.95),
                            div_factor=spec.get("div_factor", 25.0),
                            final_div_factor=spec.get("final_div_factor", 1e4),
                            three_phase=spec.get("three_phase", False))
    return torch_scheduler_v2(optimizer, spec)


def torch_clip(tensors, spec):
    """A case's ``clip`` key, applied to the gradients in place (PyTorch's utilities)."""
    import torch

    if spec is None:
        return
    clip = torch.nn.utils
    if spec["kind"] == "value":
        clip.clip_grad_value_(tensors, spec["clip_value"], foreach=False)
    elif spec["kind"] == "norm":
        for t in tensors:
            clip.clip_grad_norm_([t], spec["max_norm"], foreach=False)
    elif spec["kind"] == "global_norm":
        clip.clip_grad_norm_(tensors, spec["max_norm"], foreach=False)
    else:
        raise ValueError(spec["kind"])


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def seq_grads(seed, width=1, lo=-2.0, hi=0.5, steps=STEPS, zeros=()):
    """Gradient rows of ``width`` values: varying sign, magnitudes 10**lo ..
    10**hi, 4 significant digits, exact zeros in the given rows."""
    rng = np.random.default_rng(seed)
    mags = 10.0 ** rng.uniform(lo, hi, (steps, width))
    signs = rng.choice([-1.0, 1.0], (steps, width))
    rows = [[float(f"{v:.4g}") for v in row] for row in signs * mags]
    for i in zeros:
        rows[i] = [0.0] * width
    return rows


# Two quadratic variants (2x3), with positive moderate curvatures.
QUAD = [
    {"init": [0.5, -1.5, 2.0, -0.25, 1.25, -3.0],
     "a": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
     "b": [0.1, -0.2, 0.3, 0.0, 1.0, -0.5]},
    {"init": [-2.0, 0.75, 1.5, 3.0, -0.6, 0.2],
     "a": [2.5, 0.8, 1.2, 0.4, 3.5, 1.8],
     "b": [-1.0, 0.5, 0.0, 0.25, -0.3, 2.0]},
]
# 2x1x2 quadratic (a 3-axis tensor stored column-major in the defaults cases).
QUAD3 = {"init": [1.0, -2.0, 0.3, 0.7], "a": [1.1, 0.6, 2.2, 1.7], "b": [0.2, 0.0, -0.4, 0.9]}

# Non-default hyperparameters and a group override per optimizer.  The group
# holds the Rosenbrock tensor (and often overrides a second key as well).
# The Rosenbrock settings keep the iterates away from the bottom of the
# valley, where f32 rounding noise in the gradient would be amplified (an
# adaptive method normalises a tiny, noisy gradient) and the trajectory would
# depend on how the objective is evaluated, not only on the optimizer.
CUSTOM = {
    "sgd": ({"lr": 0.05}, {"lr": 5e-4}),
    "momentum": ({"lr": 0.02, "momentum": 0.8}, {"lr": 2e-4, "momentum": 0.95}),
    "nesterov": ({"lr": 0.03, "momentum": 0.7}, {"lr": 2e-4, "momentum": 0.9}),
    "adagrad": ({"lr": 0.1, "eps": 1e-6}, {"lr": 0.05}),
    "rmsprop": ({"lr": 0.01, "rho": 0.95, "eps": 1e-6}, {"lr": 0.001, "rho": 0.8}),
    "adadelta": ({"lr": 0.5, "rho": 0.95, "eps": 1e-5}, {"lr": 0.25, "rho": 0.8}),
    "adam": ({"lr": 0.02, "beta1": 0.8, "beta2": 0.99, "eps": 1e-7},
             {"lr": 0.005, "beta2": 0.9}),
}
# With default hyperparameters, plain gradient descent at lr 0.01 diverges on
# Rosenbrock (curvature ~1300 near the start), so those cases put it in a
# group with a smaller lr.
DEFAULTS_ROSEN_GROUP = {"sgd": {"lr": 5e-4}, "momentum": {"lr": 1e-4},
                        "nesterov": {"lr": 1e-4}}

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"]


def to_dtype(values, dtype):
    """Inputs of f32 cases are made exactly representable in f32."""
    if dtype == "f64":
        return [float(v) for v in values]
    return [float(np.float32(v)) for v in values]


def quad_param(name, q, dtype, shape=(2, 3), **extra):
    return {"name": name, "shape": list(shape), **extra,
            "init": to_dtype(q["init"], dtype),
            "objective": {"kind": "quadratic", "a": to_dtype(q["a"], dtype),
                          "b": to_dtype(q["b"], dtype)}}


def seq_param(name, init, grads, dtype, shape=(), **extra):
    return {"name": name, "shape": list(shape), **extra, "init": to_dtype(init, dtype),
            "objective": {"kind": "sequence",
                          "grads": [to_dtype(r, dtype) for r in grads]}}


def rosen_param(name, init, dtype, **extra):
    return {"name": name, "shape": [2], **extra, "init": to_dtype(init, dtype),
            "objective": {"kind": "rosenbrock"}}


def custom_case(source, opt, dtype):
    top, group = CUSTOM[opt]
    hyper = dict(top)
    group = dict(group)
    if opt in ("adagrad", "rmsprop"):
        placement = "outside" if source == "pytorch" else "inside"
        hyper["eps_placement"] = placement
    prefix = "torch" if source == "pytorch" else "seed"
    name = f"{prefix}-{opt}-{dtype}-custom"
    seed = zlib.crc32(f"{opt}-custom".encode())
    return {
        "name": name, "optimizer": opt, "dtype": dtype, "hyper": hyper,
        "groups": [{"name": "slow", "hyper": group}],
        "params": [
            quad_param("w", QUAD[0], dtype, layout="f"),
            seq_param("s", [0.5], seq_grads(seed, zeros=(40,)), dtype),
            rosen_param("r", [-1.2, 1.0], dtype, group="slow"),
            # tiny gradients, where eps (and its placement) matters
            seq_param("t", [0.1, -0.2], seq_grads(seed + 1, width=2, lo=-5.0, hi=-2.0),
                      dtype, shape=(2,)),
        ],
        "steps": STEPS, "checkpoint_every": 0,
    }


def defaults_case(source, opt, dtype):
    hyper = {}
    if source == "pytorch" and opt in ("adagrad", "rmsprop"):
        hyper["eps_placement"] = "outside"
    prefix = "torch" if source == "pytorch" else "seed"
    name = f"{prefix}-{opt}-{dtype}-defaults"
    seed = zlib.crc32(f"{opt}-defaults".encode())
    case = {"name": name, "optimizer": opt, "dtype": dtype, "hyper": hyper}
    rosen_extra = {}
    if opt in DEFAULTS_ROSEN_GROUP:
        case["groups"] = [{"name": "rosen", "hyper": DEFAULTS_ROSEN_GROUP[opt]}]
        rosen_extra = {"group": "rosen"}
    case["params"] = [
        quad_param("w", QUAD[1], dtype, layout="c"),
        seq_param("bias", [-0.25], seq_grads(seed, zeros=(0, 77)), dtype),
        rosen_param("r", [0.3, -0.4], dtype, **rosen_extra),
        quad_param("k", QUAD3, dtype, shape=(2, 1, 2), layout="f"),
        seq_param("t", [0.05, 0.3], seq_grads(seed + 1, width=2, lo=-6.0, hi=-3.0),
                  dtype, shape=(2,)),
    ]
    case["steps"] = STEPS
    case["checkpoint_every"] = 0
    return case


# Two-step cases checked by hand.  ``expect`` holds the hand-computed values;
# the script asserts the numpy implementation reproduces them.
#
# seed-hand-sgd-f64: θ0 = 1, g = 2θ − 1, η = 0.25.
#   step 1: g = 2·1 − 1 = 1,      θ = 1 − 0.25·1 = 0.75
#   step 2: g = 2·0.75 − 1 = 0.5, θ = 0.75 − 0.25·0.5 = 0.625
#
# seed-hand-momentum-f32: γ = 0.5.
#   s (η = 0.5, grads 1, 1, θ0 = 0):
#     step 1: v = 0.5·0 + 0.5·1 = 0.5,    θ = −0.5
#     step 2: v = 0.5·0.5 + 0.5·1 = 0.75, θ = −0.5 − 0.75 = −1.25
#   q in group "g" (η = 0.25, g = (1, 4)⊙θ − (0, 2), θ0 = (2, 1)):
#     step 1: g = (2, 2),   v = (0.5, 0.5),                       θ = (1.5, 0.5)
#     step 2: g = (1.5, 0), v = (0.25 + 0.375, 0.25 + 0) = (0.625, 0.25), θ = (0.875, 0.25)
#   (all exact in binary, so f32 and f64 agree)
#
# seed-hand-nesterov-f64: θ0 = 1, v0 = 0, g = θ (a = 1, b = 0), η = 0.5, γ = 0.5.
#   step 1: look-ahead θ0 − γv0 = 1, g = 1, v1 = 0 + 0.5 = 0.5, θ1 = 0.5,
#           recorded Θ1 = θ1 − γv1 = 0.5 − 0.25 = 0.25
#   step 2: look-ahead θ1 − γv1 = 0.25, g = 0.25, v2 = 0.25 + 0.125 = 0.375,
#           θ2 = 0.5 − 0.375 = 0.125, Θ2 = 0.125 − 0.1875 = −0.0625
#   (Θ form: Θ1 = 1 − (0.5·0.5 + 0.5·1) = 0.25; Θ2 = 0.25 − (0.5·0.375 + 0.5·0.25) = −0.0625)
#
# seed-hand-adagrad-f64: θ0 = 0, grads 4, 12, η = 0.5, ε = 9 (inside).
#   step 1: G = 16,            θ = −0.5·4/√(16 + 9) = −0.5·4/5 = −0.4
#   step 2: G = 16 + 144 = 160, θ = −0.4 − 0.5·12/√169 = −0.4 − 6/13 = −0.86153846153846...
#
# seed-hand-adam-f64: θ0 = 0, grads 2, 2, η = 0.1, β1 = 0.5, β2 = 0.75, ε = 1e-8.
#   step 1: m = 1, v = 1, m̂ = 1/0.5 = 2, v̂ = 1/0.25 = 4,
#           θ = −0.1·2/(2 + 1e-8) = −0.0999999995000000025
#   step 2: m = 0.5 + 1 = 1.5, v = 0.75 + 1 = 1.75, m̂ = 1.5/0.75 = 2,
#           v̂ = 1.75/(1 − 0.5625) = 4, θ = 2·(−0.0999999995) = −0.199999999000000005
HAND_CASES = [
    ({"name": "seed-hand-sgd-f64", "optimizer": "sgd", "dtype": "f64",
      "hyper": {"lr": 0.25},
      "params": [{"name": "x", "shape": [1], "init": [1],
                  "objective": {"kind": "quadratic", "a": [2], "b": [1]}}],
      "steps": 2},
     {"x": [[0.75], [0.625]]}),
    ({"name": "seed-hand-momentum-f32", "optimizer": "momentum", "dtype": "f32",
      "hyper": {"lr": 0.5, "momentum": 0.5},
      "groups": [{"name": "g", "hyper": {"lr": 0.25}}],
      "params": [{"name": "s", "shape": [], "init": [0.0],
                  "objective": {"kind": "sequence", "grads": [[1.0], [1.0]]}},
                 {"name": "q", "shape": [2], "group": "g", "init": [2.0, 1.0],
                  "objective": {"kind": "quadratic", "a": [1.0, 4.0], "b": [0.0, 2.0]}}],
      "steps": 2, "checkpoint_every": 0},
     {"s": [[-0.5], [-1.25]], "q": [[1.5, 0.5], [0.875, 0.25]]}),
    ({"name": "seed-hand-nesterov-f64", "optimizer": "nesterov", "dtype": "f64",
      "hyper": {"lr": 0.5, "momentum": 0.5},
      "params": [{"name": "x", "shape": [1], "init": [1.0],
                  "objective": {"kind": "quadratic", "a": [1.0], "b": [0.0]}}],
      "steps": 2},
     {"x": [[0.25], [-0.0625]]}),
    ({"name": "seed-hand-adagrad-f64", "optimizer": "adagrad", "dtype": "f64",
      "hyper": {"lr": 0.5, "eps": 9.0},
      "params": [{"name": "s", "shape": [], "init": [0.0],
                  "objective": {"kind": "sequence", "grads": [[4.0], [12.0]]}}],
      "steps": 2},
     {"s": [[-0.4], [-0.4 - 6 / 13]]}),
    ({"name": "seed-hand-adam-f64", "optimizer": "adam", "dtype": "f64",
      "hyper": {"lr": 0.1, "beta1": 0.5, "beta2": 0.75, "eps": 1e-8},
      "params": [{"name": "s", "shape": [], "init": [0.0],
                  "objective": {"kind": "sequence", "grads": [[2.0], [2.0]]}}],
      "steps": 2},
     {"s": [[-0.0999999995], [-0.199999999]]}),
]


# ---------------------------------------------------------------------------
# Extensions beyond the seed (pytorch_extensions.json): every PyTorch option of
# the seed optimizers and every added rule, alone and combined.
# ---------------------------------------------------------------------------

EXT_STEPS = 60

# (optimizer, tag, hyper, group overrides or None).  Adagrad and RMSprop cases
# get "eps_placement": "outside" (PyTorch's).  A case with "maximize" on runs
# on objectives with a maximum (the quadratics negated), so that it converges.
EXTENSION_CASES = [
    ("sgd", "weight_decay", {"lr": 0.05, "weight_decay": 0.1}, {"weight_decay": 0.3}),
    ("sgd", "maximize", {"lr": 0.05, "maximize": True}, None),
    ("sgd", "weight_decay-maximize", {"lr": 0.05, "weight_decay": 0.1, "maximize": True}, None),
    ("momentum", "dampening", {"lr": 0.02, "momentum": 0.8, "dampening": 0.3},
     {"dampening": 0.9, "lr": 0.01}),
    ("momentum", "weight_decay", {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.05}, None),
    ("momentum", "dampening-weight_decay-maximize",
     {"lr": 0.02, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05, "maximize": True},
     None),
    ("nesterov", "weight_decay", {"lr": 0.03, "momentum": 0.7, "weight_decay": 0.05}, None),
    ("nesterov", "weight_decay-maximize",
     {"lr": 0.03, "momentum": 0.7, "weight_decay": 0.05, "maximize": True}, None),
    ("adagrad", "lr_decay", {"lr": 0.1, "lr_decay": 0.05}, None),
    # PyTorch fills every group's `sum` with the constructor's value (a group's own
    # initial_accumulator_value is ignored), so the group here overrides lr only.
    ("adagrad", "initial_accumulator_value", {"lr": 0.1, "initial_accumulator_value": 0.5},
     {"lr": 0.05}),
    ("adagrad", "weight_decay", {"lr": 0.1, "weight_decay": 0.1}, None),
    ("adagrad", "all", {"lr": 0.1, "eps": 1e-10, "weight_decay": 0.05, "lr_decay": 0.02,
                        "initial_accumulator_value": 0.1, "maximize": True}, None),
    ("adadelta", "weight_decay", {"lr": 0.5, "weight_decay": 0.1}, None),
    ("adadelta", "weight_decay-maximize",
     {"lr": 0.5, "weight_decay": 0.1, "maximize": True}, None),
    ("rmsprop", "weight_decay", {"lr": 0.01, "weight_decay": 0.1}, None),
    ("rmsprop", "momentum", {"lr": 0.01, "momentum": 0.9}, None),
    ("rmsprop", "centered", {"lr": 0.01, "centered": True}, None),
    ("rmsprop", "centered-momentum", {"lr": 0.01, "centered": True, "momentum": 0.5},
     {"centered": False}),
    ("rmsprop", "all", {"lr": 0.01, "rho": 0.99, "centered": True, "momentum": 0.5,
                        "weight_decay": 0.05, "maximize": True}, None),
    ("adam", "weight_decay", {"lr": 0.02, "weight_decay": 0.1}, None),
    ("adam", "amsgrad", {"lr": 0.02, "amsgrad": True}, {"amsgrad": False}),
    ("adam", "maximize", {"lr": 0.02, "maximize": True}, None),
    ("adam", "amsgrad-weight_decay-maximize",
     {"lr": 0.02, "amsgrad": True, "weight_decay": 0.1, "maximize": True}, None),
    ("adamw", "defaults", {}, None),
    ("adamw", "amsgrad", {"lr": 0.02, "weight_decay": 0.1, "amsgrad": True}, None),
    ("adamw", "amsgrad-maximize",
     {"lr": 0.02, "weight_decay": 0.05, "amsgrad": True, "maximize": True}, None),
    ("adamw", "no-decay", {"lr": 0.02, "weight_decay": 0.0}, {"weight_decay": 0.2}),
    ("adamax", "defaults", {}, None),
    ("adamax", "custom", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}, None),
    ("adamax", "weight_decay-maximize",
     {"lr": 0.01, "weight_decay": 0.1, "maximize": True}, None),
    ("nadam", "defaults", {}, None),
    ("nadam", "weight_decay", {"lr": 0.01, "weight_decay": 0.1}, None),
    ("nadam", "decoupled", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
     {"decoupled_weight_decay": False}),
    ("nadam", "momentum_decay-maximize",
     {"lr": 0.01, "beta2": 0.99, "momentum_decay": 0.01, "maximize": True}, None),
    ("radam", "defaults", {}, None),
    ("radam", "weight_decay", {"lr": 0.01, "weight_decay": 0.1}, None),
    ("radam", "decoupled", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
     {"decoupled_weight_decay": False}),
    ("radam", "maximize", {"lr": 0.01, "beta2": 0.99, "maximize": True}, None),
]


def negated(q):
    return {k: ([-x for x in v] if k in ("a", "b") else v) for k, v in q.items()}


def extension_case(opt, tag, hyper, group, dtype):
    hyper = dict(hyper)
    if opt in ("adagrad", "rmsprop"):
        hyper["eps_placement"] = "outside"
    maximize = hyper.get("maximize", False)
    quad = negated(QUAD[0]) if maximize else QUAD[0]
    quad3 = negated(QUAD3) if maximize else QUAD3
    seed = zlib.crc32(f"ext-{opt}-{tag}".encode())
    k_extra = {"layout": "f"}
    case = {"name": f"torch-{opt}-{tag}-{dtype}", "optimizer": opt, "dtype": dtype,
            "hyper": hyper}
    if group is not None:
        case["groups"] = [{"name": "g", "hyper": group}]
        k_extra["group"] = "g"
    case["params"] = [
        quad_param("w", quad, dtype, layout="f"),
        seq_param("s", [0.5], seq_grads(seed, steps=EXT_STEPS, zeros=(20,)), dtype),
        quad_param("k", quad3, dtype, shape=(2, 1, 2), **k_extra),
        seq_param("t", [0.1, -0.2],
                  seq_grads(seed + 1, width=2, lo=-5.0, hi=-2.0, steps=EXT_STEPS),
                  dtype, shape=(2,)),
    ]
    case["steps"] = EXT_STEPS
    case["checkpoint_every"] = 0
    return case


def write_extensions(version):
    entries = checked_entries((extension_case(opt, tag, hyper, group, dtype)
                               for dtype in ("f64", "f32")
                               for opt, tag, hyper, group in EXTENSION_CASES), run_torch)
    n = write(HERE / "pytorch_extensions.json",
              {"generator": GENERATOR, "torch_version": version, "cases": entries})
    print(f"pytorch_extensions.json: {len(entries)} cases, {n} bytes")


def build_cases(source):
    cases = []
    for dtype in ("f64", "f32"):
        for opt in OPTIMIZERS:
            cases.append(custom_case(source, opt, dtype))
            cases.append(defaults_case(source, opt, dtype))
    return cases


# ---------------------------------------------------------------------------
# Training-loop cases (pytorch_training.json): schedules and clipping, on the
# seed optimizers, and the learning rates PyTorch's schedulers print.
# ---------------------------------------------------------------------------

TRAINING_STEPS = 60

# (name, optimizer, hyper, group "slow" overrides, schedule, clip).  Each
# runs in f64 and f32 over TRAINING_STEPS steps; params as in the custom
# cases, so every group has its own base rate for the schedule to drive.
TRAINING = [
    ("step", "sgd", {"lr": 0.05}, {"lr": 5e-4},
     {"kind": "step", "step_size": 7, "gamma": 0.5}, None),
    ("exponential", "adam", {"lr": 0.02, "beta1": 0.8, "beta2": 0.99}, {"lr": 0.005},
     {"kind": "exponential", "gamma": 0.97}, None),
    ("cosine", "momentum", {"lr": 0.02, "momentum": 0.8}, {"lr": 2e-4},
     {"kind": "cosine", "t_max": 25, "eta_min": 1e-4}, None),
    ("cosine-to-zero", "nesterov", {"lr": 0.03, "momentum": 0.7}, {"lr": 2e-4},
     {"kind": "cosine", "t_max": 20}, None),
    ("cosine-restarts", "rmsprop", {"lr": 0.01, "rho": 0.95, "eps": 1e-6,
                                    "eps_placement": "outside"}, {"lr": 0.001},
     {"kind": "cosine_restarts", "t_0": 5, "t_mult": 2, "eta_min": 1e-4}, None),
    ("linear-warmup", "adagrad", {"lr": 0.1, "eps": 1e-6, "eps_placement": "outside"},
     {"lr": 0.05}, {"kind": "linear", "start_factor": 0.1, "end_factor": 1.0,
                    "total_iters": 10}, None),
    ("linear-to-zero", "adadelta", {"lr": 0.5, "rho": 0.95, "eps": 1e-5}, {"lr": 0.25},
     {"kind": "linear", "start_factor": 0.5, "end_factor": 0.0, "total_iters": 40}, None),
    ("one-cycle", "adam", {"lr": 0.02}, {"lr": 0.005},
     {"kind": "one_cycle", "max_lr": 0.05, "total_steps": TRAINING_STEPS, "pct_start": 0.25,
      "div_factor": 10.0, "final_div_factor": 100.0}, None),
    ("clip-value", "momentum", {"lr": 0.02, "momentum": 0.8}, {"lr": 2e-4},
     None, {"kind": "value", "clip_value": 0.5}),
    ("clip-norm", "adam", {"lr": 0.02, "beta1": 0.8, "beta2": 0.99}, {"lr": 0.005},
     None, {"kind": "norm", "max_norm": 1.0}),
    ("clip-global-norm", "sgd", {"lr": 0.05}, {"lr": 5e-4},
     None, {"kind": "global_norm", "max_norm": 2.0}),
    ("cosine-global-norm", "rmsprop", {"lr": 0.01, "eps_placement": "outside"},
     {"lr": 0.002}, {"kind": "cosine", "t_max": 40, "eta_min": 1e-5},
     {"kind": "global_norm", "max_norm": 5.0}),
    ("warm-restarts-clip-value", "nesterov", {"lr": 0.03, "momentum": 0.7}, {"lr": 2e-4},
     {"kind": "cosine_restarts", "t_0": 8}, {"kind": "value", "clip_value": 1.0}),
]


def training_case(entry, dtype):
    name, opt, hyper, group, schedule, clip = entry
    seed = zlib.crc32(f"training-{name}".encode())
    case = {
        "name": f"torch-{name}-{dtype}", "optimizer": opt, "dtype": dtype, "hyper": dict(hyper),
        "groups": [{"name": "slow", "hyper": dict(group)}],
        "params": [
            quad_param("w", QUAD[0], dtype, layout="f"),
            seq_param("s", [0.5], seq_grads(seed, zeros=(30,), steps=TRAINING_STEPS), dtype),
            rosen_param("r", [-1.2, 1.0], dtype, group="slow"),
            quad_param("k", QUAD3, dtype, shape=(2, 1, 2)),
        ],
        "steps": TRAINING_STEPS, "checkpoint_every": 0,
    }
    if schedule is not None:
        case["schedule"] = schedule
    if clip is not None:
        case["clip"] = clip
    return case


# Learning-rate sequences: a plain SGD with groups of base rates 0.1 and
# 0.02, the scheduler stepped SCHEDULE_STEPS times; ``lrs[i]`` are the group
# rates of optimizer step i + 1 (``lrs[0]``: right after construction).
SCHEDULE_STEPS = 60
BASE_LRS = [0.1, 0.02]
SCHEDULES = [
    ("step", "single", [{"kind": "step", "step_size": 4}], []),
    ("exponential", "single", [{"kind": "exponential", "gamma": 0.93}], []),
    ("cosine", "single", [{"kind": "cosine", "t_max": 17, "eta_min": 0.001}], []),
    ("cosine-to-zero", "single", [{"kind": "cosine", "t_max": 10}], []),
    ("cosine-restarts", "single", [{"kind": "cosine_restarts", "t_0": 3, "t_mult": 2,
                                    "eta_min": 0.0005}], []),
    ("cosine-restarts-t-mult-1", "single", [{"kind": "cosine_restarts", "t_0": 7}], []),
    ("linear-defaults", "single", [{"kind": "linear"}], []),
    ("linear-decay", "single", [{"kind": "linear", "start_factor": 1.0, "end_factor": 0.05,
                                 "total_iters": 30}], []),
    ("one-cycle", "single", [{"kind": "one_cycle", "max_lr": 0.3, "total_steps": SCHEDULE_STEPS}],
     []),
    ("one-cycle-short-rise", "single", [{"kind": "one_cycle", "max_lr": 0.05,
                                         "total_steps": 80, "pct_start": 0.1,
                                         "div_factor": 5.0, "final_div_factor": 50.0}], []),
    ("warmup-then-cosine", "sequential",
     [{"kind": "linear", "start_factor": 0.1, "end_factor": 1.0, "total_iters": 5},
      {"kind": "cosine", "t_max": 30, "eta_min": 0.001}], [5]),
    ("three-phases", "sequential",
     [{"kind": "exponential", "gamma": 0.9}, {"kind": "step", "step_size": 3, "gamma": 0.5},
      {"kind": "cosine_restarts", "t_0": 4, "t_mult": 2}], [6, 15]),
    ("warmup-times-exponential", "chained",
     [{"kind": "linear", "start_factor": 0.5, "total_iters": 4},
      {"kind": "exponential", "gamma": 0.95}], []),
    ("step-times-cosine", "chained",
     [{"kind": "step", "step_size": 10, "gamma": 0.5}, {"kind": "cosine", "t_max": 25}], []),
]
# ReduceLROnPlateau: settings (PyTorch's keyword names) and the metric fed
# after each step.
PLATEAUS = [
    ("plateau-min-rel", {"mode": "min", "factor": 0.5, "patience": 2},
     [1.0, 0.9, 0.95, 0.9, 0.91, 0.89, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7]),
    ("plateau-max-abs-cooldown", {"mode": "max", "factor": 0.1, "patience": 0,
                                  "threshold": 0.05, "threshold_mode": "abs",
                                  "cooldown": 2, "min_lr": 1e-4},
     [0.5, 0.52, 0.6, 0.61, 0.62, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.8, 0.8, 0.8, 0.8]),
]


def torch_lr_sequence(plan, specs, milestones):
    import torch

    params = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in BASE_LRS]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, BASE_LRS)])
    subs = [torch_scheduler(opt, spec) for spec in specs]
    if plan == "single":
        (scheduler,) = subs
    elif plan == "chained":
        scheduler = torch.optim.lr_scheduler.ChainedScheduler(subs, optimizer=opt)
    else:
        scheduler = torch.optim.lr_scheduler.SequentialLR(opt, subs, milestones=milestones)
    lrs = [[g["lr"] for g in opt.param_groups]]
    for _ in range(SCHEDULE_STEPS):
        opt.step()
        scheduler.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    return lrs


def torch_plateau_sequence(settings, metrics):
    import torch

    params = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in BASE_LRS]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, BASE_LRS)])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **settings)
    lrs = [[g["lr"] for g in opt.param_groups]]
    for metric in metrics:
        opt.step()
        scheduler.step(metric)
        lrs.append([g["lr"] for g in opt.param_groups])
    return lrs


def write_training(version):
    import warnings

    entries = checked_entries((training_case(entry, dtype)
                               for dtype in ("f64", "f32") for entry in TRAINING), run_torch)
    schedules = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation chatter
        for name, plan, specs, milestones in SCHEDULES:
            schedules.append({"name": name, "plan": plan, "schedules": specs,
                              "milestones": milestones, "base_lrs": BASE_LRS,
                              "lrs": torch_lr_sequence(plan, specs, milestones)})
        for name, settings, metrics in PLATEAUS:
            schedules.append({"name": name, "plan": "plateau", "plateau": settings,
                              "metrics": metrics, "base_lrs": BASE_LRS,
                              "lrs": torch_plateau_sequence(settings, metrics)})
    n = write(HERE / "pytorch_training.json",
              {"generator": GENERATOR, "torch_version": version, "cases": entries,
               "schedules": schedules})
    print(f"pytorch_training.json: {len(entries)} cases, {len(schedules)} schedules, {n} bytes")


# ---------------------------------------------------------------------------
# Constructor defaults (pytorch_defaults.json)
# ---------------------------------------------------------------------------

DEFAULTS_CLASSES = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "Adamax",
                    "NAdam", "RAdam"]
# Implementation switches, not part of the update's math.
NOT_MATH = {"foreach", "fused", "capturable", "differentiable"}


def write_defaults(version):
    """Every numeric and boolean default of each optimizer's constructor, read from its
    signature, so that the crate's defaults are checked against torch's own."""
    import inspect

    import torch

    doc = {"generator": GENERATOR, "torch_version": version, "defaults": {}}
    for name in DEFAULTS_CLASSES:
        params = inspect.signature(getattr(torch.optim, name).__init__).parameters
        values = {}
        for key, p in params.items():
            if key in ("self", "params") or key in NOT_MATH:
                continue
            default = p.default
            if isinstance(default, tuple):  # betas
                for i, x in enumerate(default, 1):
                    values[f"beta{i}"] = float(x)
            elif isinstance(default, bool):
                values[key] = default
            else:
                values[key] = float(default)
        doc["defaults"][name] = values
    n = write(HERE / "pytorch_defaults.json", doc)
    print(f"pytorch_defaults.json: {len(DEFAULTS_CLASSES)} optimizers, {n} bytes")


# ---------------------------------------------------------------------------
# Rules v2 (rules_v2.json): muon, adafactor, asgd and rprop from torch.optim,
# lamb and lion from optax, and per-group rules.
# ---------------------------------------------------------------------------

OPTAX_VERSION = "0.2.8"
ANY_OPTAX = [False]  # --any-optax
V2_STEPS = 60

# 2-D quadratics for Muon: a tall 4x2 and a wide 2x5 matrix.
QUAD_TALL = {"init": [1.0, -0.5, 0.25, 2.0, -1.5, 0.75, 0.5, -1.0],
             "a": [1.0, 2.0, 0.5, 1.5, 2.5, 0.8, 1.2, 3.0],
             "b": [0.2, -0.4, 0.1, 0.0, 0.5, -0.3, 0.0, 0.6]}
QUAD_WIDE = {"init": [-0.8, 1.2, 0.3, -2.0, 0.9, 1.5, -0.4, 0.6, -1.1, 0.2],
             "a": [0.7, 1.4, 2.1, 0.9, 1.6, 2.4, 0.5, 1.1, 1.9, 3.2],
             "b": [0.0, 0.3, -0.6, 0.2, 0.0, -0.5, 0.1, 0.4, -0.2, 0.3]}
# A vector [3] starting at zeros (Adafactor's eps2 floor on the parameter
# RMS, LAMB's trust ratio 1 for a zero parameter norm) and a bias.
QUAD_ZERO3 = {"init": [0.0, 0.0, 0.0], "a": [1.5, 0.6, 2.4], "b": [0.3, -0.6, 0.9]}
QUAD_BIAS3 = {"init": [0.1, -0.3, 0.2], "a": [1.5, 0.6, 2.4], "b": [0.3, -0.6, 0.9]}
# 2x3 quadratic with its optimum b/a far from the start (3 to 6 away).
QUAD_FAR = {"init": [0.5, -1.5, 2.0, -0.25, 1.25, -3.0],
            "a": [0.5, 0.25, 0.2, 0.4, 0.3, 0.5],
            "b": [2.0, -1.75, -0.8, 2.0, -0.6, 1.5]}
# 2x2x3 quadratic (Adafactor: factored over the last two axes, batched over the first).
QUAD223 = {"init": [0.4, -1.0, 1.6, 0.8, -0.2, 1.1, -1.3, 0.5, 0.9, -0.7, 2.2, 0.05],
           "a": [1.2, 0.4, 2.0, 0.9, 1.7, 0.6, 2.6, 1.0, 0.3, 1.4, 0.8, 2.2],
           "b": [0.0, 0.2, -0.5, 0.3, 0.1, 0.0, -0.4, 0.6, 0.2, -0.1, 0.5, 0.0]}

# (rule, tag, hyper, groups).  Names: ``<source>-<rule>-<tag>-<dtype>``;
# the params come from v2_params.  A case with "maximize" runs on the
# quadratics negated.
V2_CASES = [
    ("muon", "defaults", {}, None),
    ("muon", "custom", {"lr": 0.02, "momentum": 0.9, "nesterov": False, "ns_steps": 3,
                        "weight_decay": 0.05, "eps": 1e-6},
     [{"name": "g", "hyper": {"lr": 0.005, "ns_coefficients": [1.5, -0.5, 0.0],
                              "adjust_lr_fn": "match_rms_adamw"}}]),
    ("muon", "adjust-original", {"lr": 0.01, "adjust_lr_fn": "original"}, None),
    ("muon", "adjust-match_rms_adamw", {"lr": 0.01, "adjust_lr_fn": "match_rms_adamw"}, None),
    ("muon", "adjust-spectral_unclamped", {"lr": 0.01, "adjust_lr_fn": "spectral_unclamped"},
     None),
    ("adafactor", "defaults", {}, None),
    # Group "fast" (lr 0.5, a sequence objective): the relative step min(lr, 1/√t)
    # is 1/√t from step 5 on, and weight decay 0.05 a step shrinks the tensor
    # towards the eps2 floor.  The quadratics have their optima far away: near
    # an optimum Adafactor keeps bouncing with normalised steps whose signs
    # follow rounding noise, and the trajectory would not be reproducible.
    ("adafactor", "custom", {"lr": 0.02, "beta2_decay": -0.5, "eps2": 1e-2, "d": 2.0,
                             "weight_decay": 0.1, "maximize": True},
     [{"name": "g", "hyper": {"eps1": 1e-10, "d": 1.0}},
      {"name": "fast", "hyper": {"lr": 0.5}}]),
    ("lamb", "defaults", {}, None),
    ("lamb", "custom", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-5, "eps_root": 1e-8,
                        "weight_decay": 0.01},
     [{"name": "g", "hyper": {"lr": 0.003, "weight_decay": 0.1}}]),
    ("lion", "defaults", {}, None),
    ("lion", "custom", {"lr": 0.003, "beta1": 0.95, "beta2": 0.98, "weight_decay": 0.1},
     [{"name": "g", "hyper": {"lr": 0.001, "beta1": 0.5}}]),
    ("asgd", "defaults", {}, None),
    # t0 10: the average starts within the run (it is not part of the trajectory).
    ("asgd", "custom", {"lr": 0.05, "lambd": 1e-2, "alpha": 0.5, "t0": 10.0,
                        "weight_decay": 0.05, "maximize": True}, None),
    ("rprop", "defaults", {}, None),
    # Step sizes grow from 0.02 by 1.5 to the 0.1 ceiling within 4 steps of one
    # sign, and shrink by 0.3 to the 1e-3 floor after a few sign changes.
    ("rprop", "custom", {"lr": 0.02, "etaminus": 0.3, "etaplus": 1.5, "step_size_min": 1e-3,
                         "step_size_max": 0.1, "maximize": True}, None),
    # Per-group rules: case-level hyper applies to the case's rule only (both
    # keys exist in Muon too, with other defaults).
    ("adamw", "muon-groups", {"lr": 0.01, "weight_decay": 0.05},
     [{"name": "hidden", "optimizer": "muon", "hyper": {"lr": 0.02}}]),
    ("lion", "lamb-groups", {"lr": 0.001, "weight_decay": 0.01},
     [{"name": "g", "optimizer": "lamb", "hyper": {"lr": 0.02}}]),
]
V2_SOURCE = {"muon": "pytorch", "adafactor": "pytorch", "asgd": "pytorch", "rprop": "pytorch",
             "adamw": "pytorch", "lamb": "optax", "lion": "optax"}


def with_zeros(rows, cells):
    """Gradient rows with exact zeros at the given (step index, element) cells."""
    rows = [list(r) for r in rows]
    for i, j in cells:
        rows[i][j] = 0.0
    return rows


def v2_params(rule, tag, dtype, maximize, seed):
    def q(x):
        return negated(x) if maximize else x

    def seq(name, init, shape=(), lo=-2.0, hi=0.5, zeros=(), **extra):
        grads = seq_grads(seed + zlib.crc32(name.encode()), width=numel(shape), lo=lo, hi=hi,
                          steps=V2_STEPS, zeros=zeros)
        return seq_param(name, init, grads, dtype, shape=shape, **extra)

    g = {"group": "g"} if tag == "custom" and rule in ("muon", "adafactor", "lamb", "lion") else {}
    if tag == "muon-groups":
        return [quad_param("h1", QUAD[0], dtype, layout="f", group="hidden"),
                quad_param("h2", QUAD_TALL, dtype, shape=(4, 2), group="hidden"),
                quad_param("bias", QUAD_BIAS3, dtype, shape=(3,)),
                seq("scale", [0.5], zeros=(10,))]
    if tag == "lamb-groups":
        return [quad_param("w", QUAD[0], dtype, layout="f"),
                seq("s", [0.5], zeros=(0, 30)),
                quad_param("k", QUAD3, dtype, shape=(2, 1, 2), layout="f", group="g"),
                quad_param("z", QUAD_ZERO3, dtype, shape=(3,), group="g")]
    if rule == "muon":
        if tag.startswith("adjust-"):
            return [quad_param("tall", QUAD_TALL, dtype, shape=(4, 2), layout="f"),
                    quad_param("wide", QUAD_WIDE, dtype, shape=(2, 5))]
        if tag == "defaults":
            return [quad_param("w", QUAD[1], dtype),
                    quad_param("tall", QUAD_TALL, dtype, shape=(4, 2), layout="f"),
                    seq("wide", [0.3, -0.2, 0.1, 0.5, -0.4, 0.0, 0.25, -0.6, 0.7, 0.15],
                        shape=(2, 5), zeros=(5,))]
        # custom: "t" has a gradient norm around eps, where the norm's floor matters
        return [quad_param("w", QUAD[0], dtype, layout="f"),
                quad_param("tall", QUAD_TALL, dtype, shape=(4, 2), **g),
                seq("wide", [0.3, -0.2, 0.1, 0.5, -0.4, 0.0, 0.25, -0.6, 0.7, 0.15],
                    shape=(2, 5), zeros=(7,)),
                seq("t", [0.1, -0.2, 0.3, 0.05], shape=(2, 2), lo=-7.5, hi=-5.5)]
    if rule == "adafactor":
        if tag == "defaults":
            return [seq("s", [0.5], zeros=(20,)),
                    quad_param("v", QUAD_ZERO3, dtype, shape=(3,)),
                    quad_param("w", QUAD[0], dtype, layout="f"),
                    quad_param("k", QUAD223, dtype, shape=(2, 2, 3))]
        return [seq("s", [0.5], zeros=(20,)),
                quad_param("v", q(QUAD_ZERO3), dtype, shape=(3,)),
                quad_param("w", q(QUAD_FAR), dtype, group="g"),
                seq("k", list(QUAD223["init"]), shape=(2, 2, 3), zeros=(15,), layout="f",
                    group="fast")]
    if rule == "lamb":
        return [quad_param("w", QUAD[0], dtype, layout="f"),
                quad_param("z", QUAD_ZERO3, dtype, shape=(3,)),
                seq("s", [-0.75], zeros=(0, 25)),
                rosen_param("r", [-1.2, 1.0], dtype, **g),
                # tiny gradients: v̂ comparable to eps_root
                seq("t", [0.1, -0.2], shape=(2,), lo=-5.0, hi=-3.0)]
    if rule == "lion":
        return [quad_param("w", QUAD[1], dtype, layout="f"),
                seq("s", [0.5], zeros=(0, 20)),  # sign(0) = 0 at step 1
                rosen_param("r", [-1.2, 1.0], dtype, **g),
                quad_param("k", QUAD3, dtype, shape=(2, 1, 2), layout="f")]
    if rule == "asgd":
        return [quad_param("w", q(QUAD[0]), dtype, layout="f"),
                seq("s", [0.5], zeros=(20,)),
                quad_param("k", q(QUAD3), dtype, shape=(2, 1, 2)),
                seq("t", [0.1, -0.2], shape=(2,), lo=-5.0, hi=-2.0)]
    if rule == "rprop":
        # "q": random signs (sign changes) with exact zeros, single cells and whole rows
        q4 = seq_grads(seed + 7, width=4, lo=-1.0, hi=0.5, steps=V2_STEPS, zeros=(12, 40))
        q4 = with_zeros(q4, [(0, 1), (3, 0), (4, 0), (9, 2), (10, 3), (11, 3), (25, 1),
                             (26, 2), (33, 0), (50, 1), (51, 1), (52, 1)])
        return [quad_param("w", q(QUAD[0]), dtype, layout="f"),
                seq("s", [0.5], zeros=(5, 6, 30)),
                rosen_param("r", [-1.2, 1.0], dtype),
                seq_param("q", [0.2, -0.1, 0.4, 0.0], q4, dtype, shape=(4,))]
    raise ValueError(rule)


def v2_case(rule, tag, hyper, groups, dtype):
    maximize = hyper.get("maximize", False)
    source = V2_SOURCE[rule]
    prefix = "torch" if source == "pytorch" else "optax"
    case = {"name": f"{prefix}-{rule}-{tag}-{dtype}", "optimizer": rule, "dtype": dtype,
            "hyper": dict(hyper)}
    if groups is not None:
        case["groups"] = [dict(g) for g in groups]
    case["params"] = v2_params(rule, tag, dtype, maximize, zlib.crc32(f"v2-{rule}-{tag}".encode()))
    case["steps"] = V2_STEPS
    case["checkpoint_every"] = 0
    return case


# --- PyTorch side --------------------------------------------------------

def torch_kwargs_v2(rule, h):
    """Every constructor argument of the rule's torch.optim class, spelled out."""
    if rule == "muon":
        return {"lr": h["lr"], "weight_decay": h["weight_decay"], "momentum": h["momentum"],
                "nesterov": h["nesterov"], "ns_coefficients": tuple(h["ns_coefficients"]),
                "eps": h["eps"], "ns_steps": h["ns_steps"], "adjust_lr_fn": h["adjust_lr_fn"]}
    if rule == "adafactor":
        return {"lr": h["lr"], "beta2_decay": h["beta2_decay"], "eps": (h["eps1"], h["eps2"]),
                "d": h["d"], "weight_decay": h["weight_decay"], "maximize": h["maximize"]}
    if rule == "asgd":
        return {"lr": h["lr"], "lambd": h["lambd"], "alpha": h["alpha"], "t0": h["t0"],
                "weight_decay": h["weight_decay"], "maximize": h["maximize"]}
    if rule == "rprop":
        return {"lr": h["lr"], "etas": (h["etaminus"], h["etaplus"]),
                "step_sizes": (h["step_size_min"], h["step_size_max"]), "maximize": h["maximize"]}
    return torch_kwargs(rule, h)


class muon_ns_in_param_dtype:
    """torch.optim.Muon runs its Newton–Schulz iteration in bfloat16
    (``grad.to(dtype=torch.bfloat16, copy=True)`` in ``_zeropower_via_newtonschulz``).
    The fixtures want it in the parameter's dtype: while this context is active,
    ``torch.optim._muon._zeropower_via_newtonschulz`` is torch's own function
    recompiled from its source with that one cast replaced by a copy in the
    gradient's dtype; everything else (momentum, Nesterov, the lr adjustment,
    decoupled weight decay, the optimizer class) is torch's code unchanged."""

    CAST = "grad.to(dtype=torch.bfloat16, copy=True)"

    def __enter__(self):
        import inspect

        from torch.optim import _muon

        self.module = _muon
        self.original = _muon._zeropower_via_newtonschulz
        src = inspect.getsource(self.original)
        assert src.count(self.CAST) == 1 and src.count("bfloat16") == 1, "torch's Muon changed"
        namespace = dict(vars(_muon))
        exec(compile(src.replace(self.CAST, "grad.to(dtype=grad.dtype, copy=True)"),
                     _muon.__file__, "exec"), namespace)
        patched = namespace["_zeropower_via_newtonschulz"]
        import torch

        x = torch.tensor([[1.0, 2.0, 0.5], [0.25, -1.0, 3.0]], dtype=torch.float64)
        assert self.original(x, (3.4445, -4.775, 2.0315), 5, 1e-7).dtype == torch.bfloat16
        assert patched(x, (3.4445, -4.775, 2.0315), 5, 1e-7).dtype == torch.float64
        _muon._zeropower_via_newtonschulz = patched
        return self

    def __exit__(self, *exc):
        self.module._zeropower_via_newtonschulz = self.original
        return False


def torch_layout(t, layout):
    """Column-major storage for layout "f"."""
    if layout == "f" and t.dim() >= 2:
        rev = list(reversed(range(t.dim())))
        t = t.permute(rev).contiguous().permute(rev)
    return t


def run_torch_v2(case, stats=None):
    """torch.optim on a rules_v2 case: one optimizer per rule (per-group rules),
    each group with every argument spelled out, foreach=False where the class
    takes it (Muon has only its single-tensor path).  ``stats`` (a dict) gets the
    smallest and largest Rprop step size seen."""
    import torch

    dtype = case["dtype"]
    T = NP_DTYPE[dtype]
    classes = {"muon": torch.optim.Muon, "adafactor": torch.optim.Adafactor,
               "asgd": torch.optim.ASGD, "rprop": torch.optim.Rprop, "adamw": torch.optim.AdamW}
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == "f64" else torch.float32)
    try:
        with muon_ns_in_param_dtype():
            tensors = []
            for p in case["params"]:
                t = torch.from_numpy(np.array(p["init"], dtype=T).reshape(p["shape"]))
                tensors.append(torch.nn.Parameter(torch_layout(t, p.get("layout", "c"))))
                assert tensors[-1].dtype == (torch.float64 if dtype == "f64" else torch.float32)
            by_rule = {}  # rule -> param groups, in order of first appearance
            for gname in [None] + [g["name"] for g in case.get("groups", [])]:
                members = [t for p, t in zip(case["params"], tensors) if p.get("group") == gname]
                if members:
                    rule = group_rule(case, gname)
                    by_rule.setdefault(rule, []).append(
                        {"params": members, **torch_kwargs_v2(rule, resolved_hyper(case, gname))})
            optimizers = []
            for rule, groups in by_rule.items():
                extra = {} if rule == "muon" else {"foreach": False}
                opt = classes[rule](groups, **extra)
                assert all(g.get("foreach", False) is False for g in opt.param_groups)
                optimizers.append(opt)

            def flat(t):
                return np.array(t.detach().numpy(), copy=True).reshape(-1)  # row-major

            traj = {p["name"]: [] for p in case["params"]}
            for step in range(1, case["steps"] + 1):
                for p, t in zip(case["params"], tensors):
                    g = gradient(p, flat(t), step, dtype)
                    t.grad = torch_layout(torch.from_numpy(g.reshape(p["shape"])),
                                          p.get("layout", "c"))
                for opt in optimizers:
                    opt.step()
                for p, t in zip(case["params"], tensors):
                    traj[p["name"]].append([float(x) for x in flat(t)])
                if stats is not None:
                    for opt in optimizers:
                        if isinstance(opt, torch.optim.Rprop):
                            for st in opt.state.values():
                                stats["min"] = min(stats.get("min", math.inf), float(st["step_size"].min()))
                                stats["max"] = max(stats.get("max", -math.inf), float(st["step_size"].max()))
            return traj
    finally:
        torch.set_default_dtype(default_dtype)


def check_torch_v2_defaults():
    """RULES_V2 against the signatures of torch's Muon, Adafactor, ASGD, Rprop."""
    import inspect

    import torch

    for rule, cls in (("muon", torch.optim.Muon), ("adafactor", torch.optim.Adafactor),
                      ("asgd", torch.optim.ASGD), ("rprop", torch.optim.Rprop)):
        sig = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
               if k not in ("self", "params") and k not in NOT_MATH}
        if "eps" in sig and isinstance(sig["eps"], tuple):  # Adafactor (eps1, eps2)
            sig["eps1"], sig["eps2"] = sig.pop("eps")
        if "etas" in sig:
            sig["etaminus"], sig["etaplus"] = sig.pop("etas")
        if "step_sizes" in sig:
            sig["step_size_min"], sig["step_size_max"] = sig.pop("step_sizes")
        if "ns_coefficients" in sig:
            sig["ns_coefficients"] = list(sig["ns_coefficients"])
        assert sig == RULES_V2[rule], (rule, sig, RULES_V2[rule])


# --- optax side ----------------------------------------------------------

def optax_transform(rule, h):
    import optax

    if rule == "lamb":
        return optax.lamb(h["lr"], b1=h["beta1"], b2=h["beta2"], eps=h["eps"],
                          eps_root=h["eps_root"], weight_decay=h["weight_decay"])
    if rule == "lion":
        return optax.lion(h["lr"], b1=h["beta1"], b2=h["beta2"], weight_decay=h["weight_decay"])
    raise ValueError(rule)


def run_optax(case):
    """optax on a rules_v2 case: ``optax.partition`` over the groups (label per
    group, each its rule's optax alias with the group's settings), eager (no
    jit), params a dict of arrays in the case dtype.  Runs in a worker process
    whose jax_enable_x64 matches the dtype (see optax_trajectories)."""
    import jax
    import jax.numpy as jnp
    import optax

    dtype = case["dtype"]
    T = NP_DTYPE[dtype]
    JT = jnp.float64 if dtype == "f64" else jnp.float32
    assert jax.config.jax_enable_x64 == (dtype == "f64"), "worker started with the wrong x64 mode"
    default = "(default)"
    labels = {p["name"]: p.get("group") or default for p in case["params"]}
    transforms = {(g or default): optax_transform(group_rule(case, g), resolved_hyper(case, g))
                  for g in [None] + [g["name"] for g in case.get("groups", [])]
                  if (g or default) in labels.values()}
    tx = optax.partition(transforms, labels)
    params = {p["name"]: jnp.asarray(np.array(p["init"], dtype=T).reshape(p["shape"]))
              for p in case["params"]}
    state = tx.init(params)

    def flat(x):
        a = np.asarray(x)
        assert a.dtype == T, (case["name"], a.dtype)
        return a.reshape(-1).copy()  # row-major

    traj = {p["name"]: [] for p in case["params"]}
    for step in range(1, case["steps"] + 1):
        grads = {p["name"]: jnp.asarray(gradient(p, flat(params[p["name"]]), step, dtype)
                                        .reshape(p["shape"]))
                 for p in case["params"]}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for p in case["params"]:
            assert params[p["name"]].dtype == JT and updates[p["name"]].dtype == JT
            traj[p["name"]].append([float(x) for x in flat(params[p["name"]])])
    # every floating leaf of the state (Adam's mu/nu, Lion's mu) in the case dtype
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == JT, (case["name"], leaf.dtype)
    return traj


def optax_worker(dtype):
    """``--optax-worker DTYPE``: reads a JSON list of cases on stdin, writes
    {"optax_version", "defaults", "trajectories"} as JSON on stdout.  x64 is set
    before jax creates any array: on for f64, off for f32."""
    import jax

    jax.config.update("jax_enable_x64", dtype == "f64")
    import inspect

    import optax

    cases = json.load(sys.stdin)
    out = {"optax_version": optax.__version__, "defaults": {}, "trajectories": {}}
    for rule, f in (("lamb", optax.lamb), ("lion", optax.lion)):
        out["defaults"][rule] = {k: p.default for k, p in inspect.signature(f).parameters.items()
                                 if p.default is not inspect.Parameter.empty and k != "mask"
                                 and k != "mu_dtype"}
    for case in cases:
        assert case["dtype"] == dtype
        out["trajectories"][case["name"]] = run_optax(case)
    json.dump(out, sys.stdout)


def optax_trajectories(cases):
    """Runs the optax cases in two worker processes, f64 with jax_enable_x64 on
    and f32 with it off (optax computes e.g. its bias corrections in the
    default float type), so that each case's arithmetic is in its own dtype."""
    import os
    import subprocess

    trajs, version, defaults = {}, None, None
    for dtype in ("f64", "f32"):
        batch = [c for c in cases if c["dtype"] == dtype]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--optax-worker", dtype],
                              input=json.dumps(batch), capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"optax worker ({dtype}) failed:\n{proc.stderr}")
        out = json.loads(proc.stdout)
        trajs.update(out["trajectories"])
        version, defaults = out["optax_version"], out["defaults"]
    # optax's own defaults (its learning rate has none)
    names = {"b1": "beta1", "b2": "beta2"}
    for rule, sig in defaults.items():
        sig = {names.get(k, k): v for k, v in sig.items()}
        expect = {k: v for k, v in RULES_V2[rule].items() if k != "lr"}
        assert sig == expect, (rule, sig, expect)
    return trajs, version


# --- numpy cross-check (printed only) ---------------------------------------

class NumpyV2:
    """The v2 rules written out in numpy, in the case dtype, from the reference
    sources (torch's _single_tensor_* functions, optax's transforms), to check
    the fixtures' semantics and how sensitive they are to rounding."""

    def __init__(self, rule, h, init, shape, dtype):
        T = NP_DTYPE[dtype]
        self.rule, self.h, self.T, self.shape = rule, h, T, tuple(shape)
        self.theta = np.array(init, dtype=T).reshape(shape)
        z = np.zeros_like(self.theta)
        self.t = 0
        if rule in ("muon", "lion"):
            self.m = z.copy()
        elif rule in ("lamb", "adamw"):
            self.m, self.v = z.copy(), z.copy()
        elif rule == "adafactor":
            if self.theta.ndim > 1:
                self.row = np.zeros(self.shape[:-1] + (1,), dtype=T)
                self.col = np.zeros(self.shape[:-2] + (1, self.shape[-1]), dtype=T)
            else:
                self.v = z.copy()
        elif rule == "asgd":
            self.eta, self.mu = T(h["lr"]), T(1)
        elif rule == "rprop":
            self.prev, self.size = z.copy(), np.full_like(self.theta, h["lr"])

    def step(self, g):
        g = g.reshape(self.shape)
        h, T, th = self.h, self.T, self.theta
        self.t += 1
        t = self.t
        if h.get("maximize"):
            g = -g
        if self.rule == "muon":
            mom = h["momentum"]
            self.m = self.m + (1 - mom) * (g - self.m)
            u = g + mom * (self.m - g) if h["nesterov"] else self.m
            tall = u.shape[0] > u.shape[1]
            x = u.T if tall else u
            x = x / max(T(np.linalg.norm(x)), T(h["eps"]))
            a, b, c = h["ns_coefficients"]
            for _ in range(h["ns_steps"]):
                gram = x @ x.T
                x = a * x + (b * gram + c * (gram @ gram)) @ x
            x = x.T if tall else x
            A, B = self.shape
            ratio = {None: math.sqrt(max(1, A / B)), "original": math.sqrt(max(1, A / B)),
                     "match_rms_adamw": 0.2 * math.sqrt(max(A, B)),
                     "spectral_unclamped": math.sqrt(A / B)}[h["adjust_lr_fn"]]
            th = th * (1 - h["lr"] * h["weight_decay"])
            th = th - (h["lr"] * ratio) * x
        elif self.rule == "adafactor":
            eps1 = np.finfo(T).eps if h["eps1"] is None else h["eps1"]
            beta = float(t) ** h["beta2_decay"]
            rho = min(h["lr"], 1 / math.sqrt(t))
            alpha = max(h["eps2"], float(np.sqrt(np.mean(th * th)))) * rho
            th = th * (1 - h["lr"] * h["weight_decay"])
            if th.ndim > 1:
                self.row = self.row + beta * (np.mean(g * g, axis=-1, keepdims=True) - self.row)
                self.col = self.col + beta * (np.mean(g * g, axis=-2, keepdims=True) - self.col)
                var = (self.row @ self.col) / np.maximum(
                    np.mean(self.row, axis=-2, keepdims=True), T(eps1))
            else:
                self.v = self.v + beta * (g * g - self.v)
                var = self.v
            u = g / np.sqrt(np.maximum(var, T(eps1 * eps1)))
            denom = max(1.0, float(np.sqrt(np.mean(u * u))) / h["d"])
            th = th - T(alpha / denom) * u
        elif self.rule == "asgd":
            if h["weight_decay"] != 0:
                g = g + h["weight_decay"] * th
            th = th * (1 - h["lambd"] * float(self.eta))
            th = th - float(self.eta) * g
            self.eta = T(h["lr"] / (1 + h["lambd"] * h["lr"] * t) ** h["alpha"])
        elif self.rule == "rprop":
            s = np.sign(g * self.prev)
            f = np.where(s > 0, T(h["etaplus"]), np.where(s < 0, T(h["etaminus"]), T(1)))
            self.size = np.clip(self.size * f, T(h["step_size_min"]), T(h["step_size_max"]))
            g = np.where(s < 0, T(0), g)
            th = th - np.sign(g) * self.size
            self.prev = g
        elif self.rule == "adamw":
            b1, b2 = h["beta1"], h["beta2"]
            th = th * (1 - h["lr"] * h["weight_decay"])
            self.m = self.m + (1 - b1) * (g - self.m)
            self.v = b2 * self.v + (1 - b2) * (g * g)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            th = th - (h["lr"] / bc1) * (self.m / (np.sqrt(self.v) / math.sqrt(bc2) + h["eps"]))
        elif self.rule == "lamb":
            b1, b2 = h["beta1"], h["beta2"]
            self.m = (1 - b1) * g + b1 * self.m
            self.v = (1 - b2) * (g * g) + b2 * self.v
            mh = self.m / T(1 - T(b1) ** t)
            vh = self.v / T(1 - T(b2) ** t)
            u = mh / (np.sqrt(vh + h["eps_root"]) + h["eps"])
            if h["weight_decay"] != 0:
                u = u + h["weight_decay"] * th
            pn, un = T(np.linalg.norm(th)), T(np.linalg.norm(u))
            ratio = T(1) if pn == 0 or un == 0 else pn / un
            th = th + (-h["lr"]) * (u * ratio)
        elif self.rule == "lion":
            b1, b2 = h["beta1"], h["beta2"]
            u = np.sign((1 - b1) * g + b1 * self.m) + h["weight_decay"] * th
            self.m = (1 - b2) * g + b2 * self.m
            th = th + (-h["lr"]) * u
        else:
            raise ValueError(self.rule)
        self.theta = np.asarray(th, dtype=T)
        assert self.theta.dtype == T


def run_numpy_v2(case):
    dtype = case["dtype"]
    states = [NumpyV2(group_rule(case, p.get("group")), resolved_hyper(case, p.get("group")),
                      p["init"], p["shape"], dtype) for p in case["params"]]
    traj = {p["name"]: [] for p in case["params"]}
    for step in range(1, case["steps"] + 1):
        grads = [gradient(p, st.theta.reshape(-1), step, dtype)
                 for p, st in zip(case["params"], states)]
        for st, g in zip(states, grads):
            st.step(g)
        for p, st in zip(case["params"], states):
            traj[p["name"]].append([float(x) for x in st.theta.reshape(-1)])
    return traj


def tolerance_use(traj, ref, dtype):
    """The largest |x − ref| / (atol + rtol·|ref|) (CONFORMANCE tolerance): below 1
    is within tolerance, and how far below says how robust the fixture is."""
    atol, rtol = (1e-12, 1e-9) if dtype == "f64" else (1e-6, 1e-4)
    use = 0.0
    for name, rows in ref.items():
        r = np.array(rows, dtype=np.float64)
        d = np.abs(np.array(traj[name], dtype=np.float64) - r)
        use = max(use, float((d / (atol + rtol * np.abs(r))).max()))
    return use


def write_rules_v2(version):
    check_torch_v2_defaults()
    cases = [v2_case(rule, tag, hyper, groups, dtype)
             for dtype in ("f64", "f32") for rule, tag, hyper, groups in V2_CASES]
    for case in cases:
        check_case(case)
    optax_cases = [c for c in cases if V2_SOURCE[c["optimizer"]] == "optax"]
    optax_trajs, optax_version = optax_trajectories(optax_cases)
    if optax_version != OPTAX_VERSION and not ANY_OPTAX[0]:
        sys.exit(f"error: optax {optax_version} found, fixtures are pinned to {OPTAX_VERSION}")
    entries, rows = [], []
    for case in cases:
        source = V2_SOURCE[case["optimizer"]]
        stats = {}
        if source == "optax":
            traj = optax_trajs[case["name"]]
        else:
            traj = run_torch_v2(case, stats)
        check_trajectory(case, traj)
        if case["optimizer"] == "rprop" and "custom" in case["name"]:  # both clamps hit
            h = resolved_hyper(case, None)
            assert stats["min"] == float(NP_DTYPE[case["dtype"]](h["step_size_min"])), stats
            assert stats["max"] == float(NP_DTYPE[case["dtype"]](h["step_size_max"])), stats
        entries.append({"case": case, "source": source, "trajectory": traj})
        mine = run_numpy_v2(case)
        rows.append((case["name"],) + compare(mine, traj, case["dtype"])
                    + (tolerance_use(mine, traj, case["dtype"]),))
    n = write(HERE / "rules_v2.json", {"generator": GENERATOR, "torch_version": version,
                                       "optax_version": optax_version, "cases": entries})
    print(f"rules_v2.json: {len(entries)} cases, {n} bytes")
    print("cross-check, numpy vs reference (max abs diff, max rel diff over |ref|>1e-8, "
          "within CONFORMANCE tolerance)")
    for name, a, r, ok, use in rows:
        print(f"  {name:44s} abs {a:9.3g}  rel {r:9.3g}  tolerance used {use:9.3g}  "
              f"{'ok' if ok else 'OUT OF TOLERANCE'}")


# ---------------------------------------------------------------------------
# Schedules v2 (schedules_v2.json): every other PyTorch schedule, momentum
# cycling, and schedules combined in a case's ``schedule`` key
# ---------------------------------------------------------------------------

def torch_scheduler_v2(optimizer, spec):
    """The schedules of CONFORMANCE.md "Rules v2" → "More schedules" (the kinds
    torch_scheduler does not know), SWALR, and the combinations
    ``{"kind": "sequential", "schedules", "milestones"}`` and ``{"kind":
    "chained", "schedules"}``, whose schedulers are built in list order.
    ``cycle_momentum`` defaults to false, as in the replay harness."""
    import torch

    S = torch.optim.lr_scheduler
    kind = spec["kind"]
    if kind == "multistep":
        return S.MultiStepLR(optimizer, milestones=spec["milestones"],
                             gamma=spec.get("gamma", 0.1))
    if kind == "constant":
        return S.ConstantLR(optimizer, factor=spec.get("factor", 1.0 / 3),
                            total_iters=spec.get("total_iters", 5))
    if kind == "polynomial":
        return S.PolynomialLR(optimizer, total_iters=spec.get("total_iters", 5),
                              power=spec.get("power", 1.0))
    if kind == "cyclic":
        return S.CyclicLR(optimizer, base_lr=spec["base_lr"], max_lr=spec["max_lr"],
                          step_size_up=spec.get("step_size_up", 2000),
                          step_size_down=spec.get("step_size_down"),
                          mode=spec.get("mode", "triangular"), gamma=spec.get("gamma", 1.0),
                          cycle_momentum=spec.get("cycle_momentum", False),
                          base_momentum=spec.get("base_momentum", 0.8),
                          max_momentum=spec.get("max_momentum", 0.9))
    if kind == "swa":
        return torch.optim.swa_utils.SWALR(optimizer, swa_lr=spec["swa_lr"],
                                           anneal_epochs=spec.get("anneal_epochs", 10),
                                           anneal_strategy=spec.get("anneal_strategy", "cos"))
    if kind == "sequential":
        subs = [torch_scheduler(optimizer, sub) for sub in spec["schedules"]]
        return S.SequentialLR(optimizer, subs, milestones=spec["milestones"])
    if kind == "chained":
        subs = [torch_scheduler(optimizer, sub) for sub in spec["schedules"]]
        return S.ChainedScheduler(subs, optimizer=optimizer)
    raise ValueError(kind)


V2_SCHEDULE_STEPS = 64
# Three groups with different base rates.
V2_BASE_LRS = [0.1, 0.02, 0.05]
# (name, rule, schedule).  The rule is "momentum" (torch SGD with momentum
# 0.9) or "adam" (betas 0.9, 0.999): where a schedule cycles momentum, it is
# SGD's momentum or Adam's beta1.  Every group has the rule's defaults and its
# base rate from V2_BASE_LRS.
V2_SCHEDULES = [
    ("multistep-repeats", "momentum",
     {"kind": "multistep", "milestones": [30, 5, 12, 12], "gamma": 0.5}),
    ("multistep-defaults", "momentum", {"kind": "multistep", "milestones": [3, 40]}),
    ("constant", "momentum", {"kind": "constant", "factor": 0.25, "total_iters": 7}),
    ("constant-defaults", "momentum", {"kind": "constant"}),
    ("constant-zero-iters", "momentum", {"kind": "constant", "factor": 0.5, "total_iters": 0}),
    ("polynomial", "momentum", {"kind": "polynomial", "total_iters": 40, "power": 2.5}),
    ("polynomial-root", "momentum", {"kind": "polynomial", "total_iters": 70, "power": 0.5}),
    ("polynomial-defaults", "momentum", {"kind": "polynomial"}),
    ("cyclic-triangular", "momentum",
     {"kind": "cyclic", "base_lr": [0.01, 0.002, 0.005], "max_lr": [0.1, 0.02, 0.05],
      "step_size_up": 7, "step_size_down": 4}),
    ("cyclic-triangular2-momentum", "momentum",
     {"kind": "cyclic", "base_lr": 0.001, "max_lr": [0.2, 0.02, 0.05], "step_size_up": 5,
      "mode": "triangular2", "cycle_momentum": True, "base_momentum": 0.8,
      "max_momentum": [0.95, 0.9, 0.85]}),
    ("cyclic-exp-range-adam-beta1", "adam",
     {"kind": "cyclic", "base_lr": 0.001, "max_lr": 0.01, "step_size_up": 6,
      "step_size_down": 9, "mode": "exp_range", "gamma": 0.97, "cycle_momentum": True,
      "base_momentum": [0.8, 0.85, 0.7], "max_momentum": 0.95}),
    ("one-cycle-cos-momentum", "momentum",
     {"kind": "one_cycle", "max_lr": [0.3, 0.05, 0.1], "total_steps": V2_SCHEDULE_STEPS,
      "cycle_momentum": True}),
    ("one-cycle-linear-adam-beta1", "adam",
     {"kind": "one_cycle", "max_lr": [0.01, 0.003, 0.02], "total_steps": 90,
      "pct_start": 0.25, "anneal_strategy": "linear", "div_factor": 10.0,
      "final_div_factor": 100.0, "cycle_momentum": True,
      "base_momentum": [0.85, 0.8, 0.75], "max_momentum": 0.95}),
    ("one-cycle-three-phase-momentum", "momentum",
     {"kind": "one_cycle", "max_lr": [0.3, 0.05, 0.1], "total_steps": V2_SCHEDULE_STEPS,
      "pct_start": 0.2, "three_phase": True, "cycle_momentum": True,
      "base_momentum": 0.8, "max_momentum": [0.95, 0.9, 0.9]}),
    # Linear annealing past the end of the cycle: PyTorch's last rate is below 0.
    ("one-cycle-three-phase-linear-adam", "adam",
     {"kind": "one_cycle", "max_lr": 0.02, "total_steps": V2_SCHEDULE_STEPS,
      "pct_start": 0.35, "anneal_strategy": "linear", "three_phase": True,
      "cycle_momentum": True}),
    ("swa-cos", "momentum",
     {"kind": "swa", "swa_lr": [0.05, 0.01, 0.2], "anneal_epochs": 10}),
    ("swa-linear", "momentum",
     {"kind": "swa", "swa_lr": 0.03, "anneal_epochs": 25, "anneal_strategy": "linear"}),
    ("swa-no-annealing", "momentum", {"kind": "swa", "swa_lr": 0.01, "anneal_epochs": 0}),
    ("sequential-constant-multistep-polynomial", "momentum",
     {"kind": "sequential", "milestones": [6, 20],
      "schedules": [{"kind": "constant", "factor": 0.5, "total_iters": 10},
                    {"kind": "multistep", "milestones": [3, 8, 8], "gamma": 0.5},
                    {"kind": "polynomial", "total_iters": 30, "power": 2.0}]}),
    # A CyclicLR built first sets the rates every later scheduler takes as its base.
    ("sequential-cyclic-then-linear", "momentum",
     {"kind": "sequential", "milestones": [12],
      "schedules": [{"kind": "cyclic", "base_lr": [0.01, 0.002, 0.005], "max_lr": 0.05,
                     "step_size_up": 3},
                    {"kind": "linear", "start_factor": 0.5, "total_iters": 10}]}),
    # The cyclic phase's momentum holds from the start, set by its constructor.
    ("sequential-linear-then-cyclic-momentum", "momentum",
     {"kind": "sequential", "milestones": [8],
      "schedules": [{"kind": "linear", "start_factor": 0.2, "total_iters": 8},
                    {"kind": "cyclic", "base_lr": 0.01, "max_lr": [0.1, 0.05, 0.08],
                     "step_size_up": 4, "step_size_down": 6, "cycle_momentum": True,
                     "max_momentum": 0.95}]}),
    # SWALR starts from the rate the cosine left.
    ("sequential-cosine-then-swa", "momentum",
     {"kind": "sequential", "milestones": [30],
      "schedules": [{"kind": "cosine", "t_max": 40},
                    {"kind": "swa", "swa_lr": 0.02, "anneal_epochs": 8,
                     "anneal_strategy": "linear"}]}),
    ("chained-constant-polynomial-multistep", "momentum",
     {"kind": "chained",
      "schedules": [{"kind": "constant", "factor": 0.5, "total_iters": 8},
                    {"kind": "polynomial", "total_iters": 50, "power": 1.5},
                    {"kind": "multistep", "milestones": [10, 20], "gamma": 0.8}]}),
    ("chained-cyclic-then-warm-restarts", "adam",
     {"kind": "chained",
      "schedules": [{"kind": "cyclic", "base_lr": [0.01, 0.002, 0.005],
                     "max_lr": [0.04, 0.01, 0.02], "step_size_up": 5, "mode": "triangular2",
                     "cycle_momentum": True},
                    {"kind": "cosine_restarts", "t_0": 6, "t_mult": 2}]}),
    ("chained-exponential-swa", "momentum",
     {"kind": "chained",
      "schedules": [{"kind": "exponential", "gamma": 0.95},
                    {"kind": "swa", "swa_lr": [0.01, 0.004, 0.02], "anneal_epochs": 12}]}),
]


def torch_rates_v2(rule, spec):
    """Every group's rate, and where the schedule cycles it every group's
    momentum (SGD) or beta1 (Adam), after construction and after each of
    V2_SCHEDULE_STEPS steps."""
    import torch

    params = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in V2_BASE_LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, V2_BASE_LRS)]
    if rule == "momentum":
        opt = torch.optim.SGD(groups, momentum=0.9)
        momentum = lambda g: g["momentum"]
    else:
        opt = torch.optim.Adam(groups, betas=(0.9, 0.999))
        momentum = lambda g: g["betas"][0]
    scheduler = torch_scheduler(opt, spec)
    lrs, momenta = [[g["lr"] for g in opt.param_groups]], [[momentum(g) for g in opt.param_groups]]
    for _ in range(V2_SCHEDULE_STEPS):
        opt.step()
        scheduler.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        momenta.append([momentum(g) for g in opt.param_groups])
    return lrs, momenta


# Replay cases with momentum cycling (and a combination in the case's
# ``schedule`` key): whole trajectories, in f64 and f32.
V2_TRAINING = [
    ("one-cycle-momentum", "momentum", {"lr": 0.02, "momentum": 0.8}, {"lr": 2e-4},
     {"kind": "one_cycle", "max_lr": [0.03, 3e-4], "total_steps": TRAINING_STEPS,
      "pct_start": 0.25, "cycle_momentum": True, "max_momentum": [0.95, 0.9]}),
    ("cyclic-adam-beta1", "adam", {"lr": 0.02, "beta1": 0.8, "beta2": 0.99}, {"lr": 0.005},
     {"kind": "cyclic", "base_lr": [0.002, 0.0005], "max_lr": 0.02, "step_size_up": 7,
      "mode": "triangular2", "cycle_momentum": True, "base_momentum": 0.8,
      "max_momentum": 0.9}),
    ("sequential-warmup-polynomial-nesterov", "nesterov", {"lr": 0.03, "momentum": 0.7},
     {"lr": 2e-4},
     {"kind": "sequential", "milestones": [10],
      "schedules": [{"kind": "constant", "factor": 0.1, "total_iters": 10},
                    {"kind": "polynomial", "total_iters": 50, "power": 2.0}]}),
    ("chained-multistep-swa-nadam", "nadam", {"lr": 0.01}, {"lr": 0.003},
     {"kind": "chained",
      "schedules": [{"kind": "multistep", "milestones": [10, 25, 25], "gamma": 0.7},
                    {"kind": "swa", "swa_lr": [0.004, 0.001], "anneal_epochs": 15,
                     "anneal_strategy": "linear"}]}),
]


def v2_training_case(entry, dtype):
    name, opt, hyper, group, schedule = entry
    case = training_case((name, opt, hyper, group, schedule, None), dtype)
    case["name"] = f"torch-schedules-v2-{name}-{dtype}"
    return case


def write_schedules_v2(version):
    import warnings

    entries = checked_entries((v2_training_case(entry, dtype)
                               for dtype in ("f64", "f32") for entry in V2_TRAINING), run_torch)
    schedules = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation chatter
        for name, rule, spec in V2_SCHEDULES:
            lrs, momenta = torch_rates_v2(rule, spec)
            entry = {"name": name, "rule": rule, "schedule": spec, "base_lrs": V2_BASE_LRS,
                     "lrs": lrs}
            if spec.get("cycle_momentum") or any(
                    sub.get("cycle_momentum") for sub in spec.get("schedules", [])):
                entry["momenta"] = momenta
            else:  # nothing may touch the momentum
                assert all(row == momenta[0] for row in momenta), name
            schedules.append(entry)
    n = write(HERE / "schedules_v2.json",
              {"generator": GENERATOR, "torch_version": version, "cases": entries,
               "schedules": schedules})
    print(f"schedules_v2.json: {len(entries)} cases, {len(schedules)} schedules, {n} bytes")
# Weight averaging and gradient accumulation (averaging.json, --only averaging)
# ---------------------------------------------------------------------------

AVERAGING_UPDATES = 60
# The parameter sequence to average: torch.optim.Adam (foreach=False, lr 0.05)
# on quadratics, in the dtype, one row-major snapshot per step.
AVERAGING_PARAMS = [
    {"name": "w", "shape": [2, 3], "init": [1.5, -0.5, 0.25, 2.0, -1.25, 0.75],
     "a": [1.0, 2.0, 0.5, 1.5, 2.5, 0.8], "b": [0.2, -0.4, 0.1, 0.0, 0.5, -0.3]},
    {"name": "b", "shape": [4], "init": [0.5, -1.0, 3.0, 0.0],
     "a": [0.7, 1.4, 2.1, 0.9], "b": [0.0, 0.3, -0.6, 0.2]},
]
# (name, source, average settings), each in f64 and f32.
AVERAGING_CASES = [
    ("torch-swa", "pytorch", {"kind": "swa"}),
    ("torch-ema", "pytorch", {"kind": "ema", "decay": 0.9, "warmup": False}),
    # lerp weight 1 - decay >= 0.5: torch's lerp takes its other branch
    ("torch-ema-light", "pytorch", {"kind": "ema", "decay": 0.25, "warmup": False}),
    ("torch-ema-warmup", "pytorch", {"kind": "ema", "decay": 0.99, "warmup": True}),
    ("optax-ema", "optax", {"kind": "optax_ema", "decay": 0.9, "debias": False}),
    ("optax-ema-debias", "optax", {"kind": "optax_ema", "decay": 0.9, "debias": True}),
]
# optax ema over f32 parameters with accumulator_dtype float64 (jax_enable_x64 on).
AVERAGING_MIXED = [
    ("optax-ema-debias-acc64", {"kind": "optax_ema", "decay": 0.9, "debias": True}),
]
# optax.MultiSteps(optax.adam(...), every_k_schedule=k) over micro-batches:
# gradient a*theta - b_j (two roundings, in the dtype) with b_j = a*target +
# noise varying by micro-step j, as micro-batches of one batch would.  Every
# value stays well away from zero: optax's f32 adam computes its bias
# corrections 1 - beta^t in f32 (relative error up to ~1e-5 for beta2 0.999),
# this crate's as PyTorch does, and near zero that difference alone would use
# up the f32 tolerance.
MULTI_STEPS_PARAMS = [
    {"name": "w", "shape": [2, 3], "init": [1.5, -1.0, 2.0, -2.5, 1.25, -1.75],
     "a": [1.0, 2.0, 0.5, 1.5, 2.5, 0.8], "target": [1.0, -0.75, 1.5, -2.0, 1.0, -1.25]},
    {"name": "b", "shape": [4], "init": [1.0, -1.5, 3.0, 2.0],
     "a": [0.7, 1.4, 2.1, 0.9], "target": [0.6, -1.0, 2.5, 1.5]},
]
MULTI_STEPS_MICRO = 48
MULTI_STEPS_ADAM = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
MULTI_STEPS_K = [4, 3]


def averaging_param_sequence(dtype):
    """torch.optim.Adam on AVERAGING_PARAMS: {name: [row-major values per step]}."""
    import torch

    T = NP_DTYPE[dtype]
    tensors = [torch.nn.Parameter(torch.from_numpy(np.array(p["init"], dtype=T).reshape(p["shape"])))
               for p in AVERAGING_PARAMS]
    opt = torch.optim.Adam(tensors, lr=0.05, foreach=False)
    seq = {p["name"]: [] for p in AVERAGING_PARAMS}
    for _ in range(AVERAGING_UPDATES):
        for p, t in zip(AVERAGING_PARAMS, tensors):
            theta = t.detach().numpy().reshape(-1)
            g = np.array(p["a"], dtype=T) * theta - np.array(p["b"], dtype=T)
            t.grad = torch.from_numpy(g.reshape(p["shape"]))
        opt.step()
        for p, t in zip(AVERAGING_PARAMS, tensors):
            seq[p["name"]].append([float(x) for x in t.detach().numpy().reshape(-1)])
    return seq


def tf_warmup_decay(decay, n):
    """The decay of tf.train.ExponentialMovingAverage(decay, num_updates=n):
    min(decay, (1 + n) / (10 + n)), n the snapshots averaged so far."""
    return min(decay, (1.0 + n) / (10.0 + n))


def torch_averages(average, seq, dtype):
    """torch.optim.swa_utils.AveragedModel over the parameter sequence: the
    default avg_fn (SWA), get_ema_multi_avg_fn(decay), or, with warm-up, the
    same lerp with TensorFlow's warmed-up decay as multi_avg_fn."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    T = NP_DTYPE[dtype]
    model = torch.nn.Module()
    for p in AVERAGING_PARAMS:
        model.register_parameter(p["name"], torch.nn.Parameter(
            torch.from_numpy(np.array(p["init"], dtype=T).reshape(p["shape"]))))
    if average["kind"] == "swa":
        averaged = AveragedModel(model)
    elif average["warmup"]:
        decay = average["decay"]

        @torch.no_grad()
        def warmup_ema(ema_params, params, n_averaged):
            weight = 1.0 - tf_warmup_decay(decay, int(n_averaged))
            torch._foreach_lerp_(ema_params, params, weight)

        averaged = AveragedModel(model, multi_avg_fn=warmup_ema)
    else:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(average["decay"]))
    out = {p["name"]: [] for p in AVERAGING_PARAMS}
    for step in range(AVERAGING_UPDATES):
        with torch.no_grad():
            for p in AVERAGING_PARAMS:
                values = np.array(seq[p["name"]][step], dtype=T).reshape(p["shape"])
                getattr(model, p["name"]).copy_(torch.from_numpy(values))
        averaged.update_parameters(model)
        for p in AVERAGING_PARAMS:
            a = getattr(averaged.module, p["name"]).detach().numpy()
            assert a.dtype == T
            out[p["name"]].append([float(x) for x in a.reshape(-1)])
    assert int(averaged.n_averaged) == AVERAGING_UPDATES
    return out


def optax_averages(average, seq, dtype, acc_dtype):
    """optax.ema(decay, debias, accumulator_dtype) fed the parameter sequence as
    its updates: its output (debiased when asked) after every update."""
    import jax
    import jax.numpy as jnp
    import optax

    T, JA = NP_DTYPE[dtype], {"f64": jnp.float64, "f32": jnp.float32}[acc_dtype]
    assert jax.config.jax_enable_x64 == ("f64" in (dtype, acc_dtype))
    tx = optax.ema(average["decay"], debias=average["debias"], accumulator_dtype=JA)
    params = {p["name"]: jnp.asarray(np.array(p["init"], dtype=T).reshape(p["shape"]))
              for p in AVERAGING_PARAMS}
    state = tx.init(params)
    out = {p["name"]: [] for p in AVERAGING_PARAMS}
    for step in range(AVERAGING_UPDATES):
        params = {p["name"]: jnp.asarray(np.array(seq[p["name"]][step], dtype=T).reshape(p["shape"]))
                  for p in AVERAGING_PARAMS}
        averages, state = tx.update(params, state)
        for p in AVERAGING_PARAMS:
            assert state.ema[p["name"]].dtype == JA
            a = np.asarray(averages[p["name"]])
            out[p["name"]].append([float(x) for x in a.reshape(-1)])
    return out


def multi_steps_params(dtype):
    """The tensors of the MultiSteps cases, each with its per-micro-step b_j."""
    rng = np.random.default_rng(20240607)
    T = NP_DTYPE[dtype]
    params = []
    for p in MULTI_STEPS_PARAMS:
        n = numel(p["shape"])
        noise = rng.uniform(-0.25, 0.25, size=(MULTI_STEPS_MICRO, n))
        center = np.array(p["a"]) * np.array(p["target"])
        b = [[float(T(x)) for x in center + row] for row in noise]
        params.append({"name": p["name"], "shape": p["shape"],
                       "init": [float(T(x)) for x in p["init"]],
                       "a": [float(T(x)) for x in p["a"]], "b": b})
    return params


def optax_multi_steps(case):
    """optax.MultiSteps(optax.adam(...), every_k_schedule=k), the accumulator
    in the case's dtype, eager: the parameters after every micro-step."""
    import jax.numpy as jnp
    import optax

    T = NP_DTYPE[case["dtype"]]
    JT = {"f64": jnp.float64, "f32": jnp.float32}[case["dtype"]]
    h = case["adam"]
    ms = optax.MultiSteps(optax.adam(h["lr"], b1=h["beta1"], b2=h["beta2"], eps=h["eps"]),
                          every_k_schedule=case["every_k"], accumulator_dtype=JT)
    params = {p["name"]: jnp.asarray(np.array(p["init"], dtype=T).reshape(p["shape"]))
              for p in case["params"]}
    state = ms.init(params)
    traj = {p["name"]: [] for p in case["params"]}
    for j in range(case["micro_steps"]):
        grads = {}
        for p in case["params"]:
            theta = np.asarray(params[p["name"]]).reshape(-1)
            g = np.array(p["a"], dtype=T) * theta - np.array(p["b"][j], dtype=T)
            grads[p["name"]] = jnp.asarray(g.reshape(p["shape"]))
        updates, state = ms.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        assert bool(ms.has_updated(state)) == ((j + 1) % case["every_k"] == 0)
        for p in case["params"]:
            a = np.asarray(params[p["name"]])
            assert a.dtype == T and state.acc_grads[p["name"]].dtype == JT
            traj[p["name"]].append([float(x) for x in a.reshape(-1)])
    return traj


def averaging_optax_worker():
    """Worker (see averaging_optax): reads {"x64", "averages": [[case, seq]],
    "multi_steps": [case]} on stdin, writes the results and optax's version."""
    import jax

    job = json.load(sys.stdin)
    jax.config.update("jax_enable_x64", job["x64"])
    import optax

    out = {"optax_version": optax.__version__, "averages": [], "multi_steps": []}
    for case, seq in job["averages"]:
        out["averages"].append(optax_averages(case["average"], seq, case["dtype"],
                                              case["accumulator_dtype"]))
    for case in job["multi_steps"]:
        out["multi_steps"].append(optax_multi_steps(case))
    json.dump(out, sys.stdout)


def averaging_optax(x64, averages, multi_steps):
    """Runs optax in a worker process with jax_enable_x64 as given (optax
    computes in float32 unless it is on)."""
    import os
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); "
            "import generate; generate.averaging_optax_worker()")
    job = {"x64": x64, "averages": averages, "multi_steps": multi_steps}
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(job),
                          capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode != 0:
        sys.exit(f"optax averaging worker (x64 {x64}) failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def numpy_average(average, seq, dtype, acc_dtype):
    """This crate's averaging arithmetic in numpy (informational cross-check):
    SWA a + (p - a)/(n + 1); torch's EMA as lerp a + w(p - a) (w < 0.5) or
    p - (p - a)(1 - w), without FMA; optax's EMA (1 - d)p + d·ema, the two
    products in the parameter and accumulator dtypes, the sum and debiasing
    (1 - d^t in that dtype) in the wider one."""
    P, S = NP_DTYPE[dtype], NP_DTYPE[acc_dtype]
    W = np.float64 if np.float64 in (P, S) else np.float32
    kind = average["kind"]
    out = {}
    for name, rows in seq.items():
        state = ema = None
        res = []
        for n, row in enumerate(rows):
            p = np.array(row, dtype=P)
            if kind == "optax_ema":
                d = average["decay"]
                ema = np.zeros_like(p, dtype=S) if ema is None else ema
                new = W(P(1.0 - d) * p) + W(S(d) * ema)
                ema = new.astype(S)
                avg = new
                if average["debias"]:
                    bc = W(1) - W(d) ** W(n + 1)
                    avg = new / bc
                res.append([float(x) for x in avg.astype(S)])
                continue
            if state is None:
                state = p.astype(S)
            elif kind == "swa":
                a = state.astype(W)
                state = (a + (p.astype(W) - a) / W(n + 1)).astype(S)
            else:
                d = tf_warmup_decay(average["decay"], n) if average["warmup"] else average["decay"]
                w = W(1.0 - d)
                a, q = state.astype(W), p.astype(W)
                state = (a + w * (q - a) if abs(w) < 0.5 else q - (q - a) * (W(1) - w)).astype(S)
            res.append([float(x) for x in state])
        out[name] = res
    return out


def write_averaging(version):
    torch_seqs = {dtype: averaging_param_sequence(dtype) for dtype in ("f64", "f32")}
    cases = []
    for dtype in ("f64", "f32"):
        for name, source, average in AVERAGING_CASES:
            cases.append({"name": f"{name}-{dtype}", "source": source, "dtype": dtype,
                          "accumulator_dtype": dtype, "average": average})
    for name, average in AVERAGING_MIXED:
        cases.append({"name": name, "source": "optax", "dtype": "f32",
                      "accumulator_dtype": "f64", "average": average})
    multi = [{"name": f"optax-multisteps-adam-k{k}-{dtype}", "source": "optax",
              "dtype": dtype, "every_k": k, "adam": MULTI_STEPS_ADAM,
              "micro_steps": MULTI_STEPS_MICRO, "params": multi_steps_params(dtype)}
             for dtype in ("f64", "f32") for k in MULTI_STEPS_K]
    optax_version = None
    for x64 in (True, False):
        mine = [c for c in cases if c["source"] == "optax"
                and ("f64" in (c["dtype"], c["accumulator_dtype"])) == x64]
        steps = [c for c in multi if (c["dtype"] == "f64") == x64]
        out = averaging_optax(x64, [[c, torch_seqs[c["dtype"]]] for c in mine], steps)
        optax_version = out["optax_version"]
        for c, averages in zip(mine, out["averages"]):
            c["averages"] = averages
        for c, traj in zip(steps, out["multi_steps"]):
            c["trajectory"] = traj
    if optax_version != OPTAX_VERSION and not ANY_OPTAX[0]:
        sys.exit(f"error: optax {optax_version} found, fixtures are pinned to {OPTAX_VERSION}")
    for c in cases:
        if c["source"] == "pytorch":
            c["averages"] = torch_averages(c["average"], torch_seqs[c["dtype"]], c["dtype"])
    for c in cases:
        S = NP_DTYPE[c["accumulator_dtype"]]
        for rows in c["averages"].values():
            assert len(rows) == AVERAGING_UPDATES
            assert all(float(S(x)) == x and math.isfinite(x) for row in rows for x in row)
    for c in multi:
        for p in c["params"]:
            rows = c["trajectory"][p["name"]]
            assert len(rows) == MULTI_STEPS_MICRO and rows[0] == p["init"] != rows[-1]
            assert all(abs(x) >= 0.4 for row in rows for x in row), (c["name"], p["name"])
    doc = {"generator": GENERATOR, "torch_version": version, "optax_version": optax_version,
           "updates": AVERAGING_UPDATES,
           "parameters": {dtype: [{"name": p["name"], "shape": p["shape"], "values": seq[p["name"]]}
                                  for p in AVERAGING_PARAMS]
                          for dtype, seq in torch_seqs.items()},
           "averages": cases, "multi_steps": multi}
    n = write(HERE / "averaging.json", doc)
    print(f"averaging.json: {len(cases)} averaging cases, {len(multi)} MultiSteps cases, {n} bytes")
    print("cross-check, numpy transcription of the crate's arithmetic vs reference "
          "(max abs diff, max rel diff over |ref|>1e-8, within tolerance, identical bits)")
    for c in cases:
        mine = numpy_average(c["average"], torch_seqs[c["dtype"]], c["dtype"], c["accumulator_dtype"])
        a, r, ok = compare(mine, c["averages"], c["accumulator_dtype"])
        same = mine == c["averages"]
        print(f"  {c['name']:28s} abs {a:9.3g}  rel {r:9.3g}  {'ok' if ok else 'OUT OF TOLERANCE'}"
              f"  {'bit-identical' if same else 'differs'}")


# ---------------------------------------------------------------------------
# lambda.json: LambdaLR, MultiplicativeLR, and a schedule per group
# ---------------------------------------------------------------------------

# Factors of the step (PyTorch's last_epoch), as Python source that the Rust
# tests write out operation for operation; a list has one per group.
LAMBDA_SOURCES = {
    # LambdaLR
    "exp95": "0.95 ** step",
    "warmup10": "min(1, (step + 1) / 10)",
    "inverse": "1 / (1 + 0.1 * step)",
    "stairs": "step // 30",  # PyTorch's docs: a factor of 0 for the first 30 steps
    "each": ["0.95 ** step", "min(1, (step + 1) / 10)", "1 / (1 + 0.1 * step)"],
    # MultiplicativeLR
    "const95": "0.95",
    "halve10": "0.5 if step % 10 == 0 else 1.0",
    "harmonic": "(step + 1) / (step + 2)",
    "each_mult": ["0.9", "0.5 if step % 10 == 0 else 1.0", "(step + 1) / (step + 2)"],
}


def lambda_fn(name):
    """The torch ``lr_lambda`` of LAMBDA_SOURCES[name]: a function or a list."""
    source = LAMBDA_SOURCES[name]
    if isinstance(source, list):
        return [eval(f"lambda step: {one}") for one in source]
    return eval(f"lambda step: {source}")


def torch_scheduler_lambda(optimizer, spec):
    """torch_scheduler, with the kinds ``lambda`` and ``multiplicative``
    (``{"kind", "name"}``) anywhere in a sequence or chain."""
    import torch

    S = torch.optim.lr_scheduler
    kind = spec["kind"]
    if kind == "lambda":
        return S.LambdaLR(optimizer, lr_lambda=lambda_fn(spec["name"]))
    if kind == "multiplicative":
        return S.MultiplicativeLR(optimizer, lr_lambda=lambda_fn(spec["name"]))
    if kind == "sequential":
        subs = [torch_scheduler_lambda(optimizer, sub) for sub in spec["schedules"]]
        return S.SequentialLR(optimizer, subs, milestones=spec["milestones"])
    if kind == "chained":
        subs = [torch_scheduler_lambda(optimizer, sub) for sub in spec["schedules"]]
        return S.ChainedScheduler(subs, optimizer=optimizer)
    return torch_scheduler(optimizer, spec)


def _lam(name):
    return {"kind": "lambda", "name": name}


def _mul(name):
    return {"kind": "multiplicative", "name": name}


# (name, schedule) on torch SGD(momentum=0.9), groups of V2_BASE_LRS.
LAMBDA_SCHEDULES = [
    ("lambda-exp95", _lam("exp95")),
    ("lambda-warmup10", _lam("warmup10")),
    ("lambda-inverse", _lam("inverse")),
    ("lambda-stairs", _lam("stairs")),
    ("lambda-each", _lam("each")),
    ("multiplicative-const95", _mul("const95")),
    ("multiplicative-halve10", _mul("halve10")),
    ("multiplicative-each", _mul("each_mult")),
    ("sequential-lambda-warmup-then-cosine", {
        "kind": "sequential", "milestones": [10],
        "schedules": [_lam("warmup10"), {"kind": "cosine", "t_max": 54}]}),
    # Entering the sequence, MultiplicativeLR multiplies the rate the cosine left
    # by the factor of step 0.
    ("sequential-cosine-then-multiplicative", {
        "kind": "sequential", "milestones": [20],
        "schedules": [{"kind": "cosine", "t_max": 40}, _mul("harmonic")]}),
    ("sequential-multiplicative-then-lambda", {
        "kind": "sequential", "milestones": [25],
        "schedules": [_mul("halve10"), _lam("inverse")]}),
    ("sequential-lambda-multiplicative-step", {
        "kind": "sequential", "milestones": [10, 40],
        "schedules": [_lam("warmup10"), _mul("each_mult"),
                      {"kind": "step", "step_size": 7, "gamma": 0.5}]}),
    ("chained-lambda-exponential", {
        "kind": "chained", "schedules": [_lam("warmup10"), {"kind": "exponential", "gamma": 0.97}]}),
    # LambdaLR sets its rate from the base rate, whatever the one before it set.
    ("chained-exponential-lambda", {
        "kind": "chained", "schedules": [{"kind": "exponential", "gamma": 0.97}, _lam("each")]}),
    ("chained-multiplicative-cosine", {
        "kind": "chained", "schedules": [_mul("each_mult"), {"kind": "cosine", "t_max": 30}]}),
    # A CyclicLR built first sets the base rates LambdaLR reads.
    ("chained-cyclic-lambda", {
        "kind": "chained",
        "schedules": [{"kind": "cyclic", "base_lr": [0.01, 0.002, 0.005], "max_lr": 0.05,
                       "step_size_up": 5}, _lam("inverse")]}),
]

# (name, {group index: schedule}); groups not listed keep their rate.
LAMBDA_GROUP_NAMES = ["default", "g1", "g2"]
LAMBDA_PER_GROUP = [
    ("warmup-cosine-body-constant-head", {
        0: {"kind": "sequential", "milestones": [5],
            "schedules": [{"kind": "linear", "start_factor": 0.1, "total_iters": 5},
                          {"kind": "cosine", "t_max": 59}]},
        1: {"kind": "constant", "factor": 0.5, "total_iters": 10}}),
    ("lambda-warmup-last-group-only", {2: _lam("warmup10")}),
    ("multiplicative-one-cycle-chained-lambda", {
        0: _mul("const95"),
        1: {"kind": "one_cycle", "max_lr": [0.05], "total_steps": 64, "pct_start": 0.25},
        2: {"kind": "chained", "schedules": [{"kind": "exponential", "gamma": 0.97},
                                             _lam("inverse")]}}),
    ("cyclic-momentum-step-multiplicative", {
        0: {"kind": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4,
            "cycle_momentum": True, "base_momentum": 0.8, "max_momentum": 0.95},
        1: {"kind": "step", "step_size": 10, "gamma": 0.5},
        2: {"kind": "sequential", "milestones": [16],
            "schedules": [_mul("halve10"), _lam("stairs")]}}),
]


def torch_lambda_rates(base_lrs, spec):
    """Every group's rate and momentum after construction and after each of
    V2_SCHEDULE_STEPS steps of ``spec`` on torch SGD(momentum=0.9) with groups
    of ``base_lrs`` (``spec`` None: nothing drives them)."""
    import torch

    params = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in base_lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)]
    opt = torch.optim.SGD(groups, momentum=0.9)
    scheduler = None if spec is None else torch_scheduler_lambda(opt, spec)
    row = lambda key: [g[key] for g in opt.param_groups]
    lrs, momenta = [row("lr")], [row("momentum")]
    for _ in range(V2_SCHEDULE_STEPS):
        opt.step()
        if scheduler is not None:
            scheduler.step()
        lrs.append(row("lr"))
        momenta.append(row("momentum"))
    return lrs, momenta


def write_lambda(version):
    import warnings

    schedules, per_group = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation chatter
        for name, spec in LAMBDA_SCHEDULES:
            lrs, momenta = torch_lambda_rates(V2_BASE_LRS, spec)
            assert all(row == momenta[0] for row in momenta), name
            schedules.append({"name": name, "rule": "momentum", "schedule": spec,
                              "base_lrs": V2_BASE_LRS, "lrs": lrs})
        for name, specs in LAMBDA_PER_GROUP:
            # Each group on an optimizer of its own: the independent reference.
            columns = [torch_lambda_rates([lr], specs.get(index))
                       for index, lr in enumerate(V2_BASE_LRS)]
            lrs = [[c[0][step][0] for c in columns] for step in range(V2_SCHEDULE_STEPS + 1)]
            momenta = [[c[1][step][0] for c in columns] for step in range(V2_SCHEDULE_STEPS + 1)]
            groups = [{"group": LAMBDA_GROUP_NAMES[index], "schedule": spec}
                      for index, spec in sorted(specs.items())]
            per_group.append({"name": name, "rule": "momentum", "groups": groups,
                              "base_lrs": V2_BASE_LRS, "lrs": lrs, "momenta": momenta})
    n = write(HERE / "lambda.json",
              {"generator": GENERATOR, "torch_version": version, "lambdas": LAMBDA_SOURCES,
               "schedules": schedules, "per_group": per_group})
    print(f"lambda.json: {len(schedules)} schedules, {len(per_group)} per-group, {n} bytes")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def _scalar(x):
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"non-finite value {x}")
        return repr(x)  # shortest string that round-trips
    return json.dumps(x)


def _dump(obj, indent=0):
    """JSON with dicts indented and every list of numbers on one line."""
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}  {json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (list, tuple, dict)) for x in obj):
            return "[" + ", ".join(_scalar(x) for x in obj) + "]"
        items = [pad + "  " + _dump(x, indent + 1) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return _scalar(obj)


def checked_entries(cases, run, source="pytorch"):
    """Runs each case with `run`, checks the case and its trajectory; the fixture entries."""
    entries = []
    for case in cases:
        check_case(case)
        traj = run(case)
        check_trajectory(case, traj)
        entries.append({"case": case, "source": source, "trajectory": traj})
    return entries


def write(path, doc):
    text = _dump(doc) + "\n"
    assert json.loads(text) == json.loads(json.dumps(doc))  # round-trips
    path.write_text(text)
    return len(text)


def check_trajectory(case, traj):
    for p in case["params"]:
        rows = traj[p["name"]]
        assert len(rows) == case["steps"], (case["name"], p["name"])
        for row in rows:
            assert len(row) == numel(p["shape"])
            assert all(math.isfinite(x) for x in row), (case["name"], p["name"])
            if case["dtype"] == "f32":
                assert all(float(np.float32(x)) == x for x in row)
        if case["steps"] > 2:  # the trajectory actually moves
            assert rows[0] != rows[-1], (case["name"], p["name"])


# ---------------------------------------------------------------------------
# Cross-check (printed only)
# ---------------------------------------------------------------------------

def compare(traj, ref, dtype):
    """Max abs diff, max rel diff (over |ref| > 1e-8), and whether every value
    is within CONFORMANCE's tolerance of ``ref``."""
    atol, rtol = (1e-12, 1e-9) if dtype == "f64" else (1e-6, 1e-4)
    max_abs = max_rel = 0.0
    ok = True
    for name, rows in ref.items():
        a = np.array(traj[name], dtype=np.float64)
        r = np.array(rows, dtype=np.float64)
        d = np.abs(a - r)
        max_abs = max(max_abs, float(d.max()))
        big = np.abs(r) > 1e-8
        if big.any():
            max_rel = max(max_rel, float((d[big] / np.abs(r[big])).max()))
        ok = ok and bool((d <= atol + rtol * np.abs(r)).all())
    return max_abs, max_rel, ok


def cross_check(torch_entries, seed_entries):
    rows = []
    for e in torch_entries:  # numpy seed formulas on the PyTorch cases
        c = e["case"]
        rows.append((c["name"], "numpy vs torch") + compare(run_seed(c), e["trajectory"], c["dtype"]))
    for e in seed_entries:  # PyTorch on the seed cases it can express
        c = e["case"]
        if torch_expressible(c):
            rows.append((c["name"], "torch vs numpy") + compare(run_torch(c), e["trajectory"], c["dtype"]))
    print("\ncross-check (max abs diff, max rel diff over |ref|>1e-8, within CONFORMANCE tolerance)")
    for name, what, a, r, ok in rows:
        print(f"  {name:32s} {what:15s} abs {a:9.3g}  rel {r:9.3g}  {'ok' if ok else 'OUT OF TOLERANCE'}")
    for dtype in ("f64", "f32"):
        sel = [x for x in rows if f"-{dtype}-" in x[0] or x[0].endswith(dtype)]
        print(f"  {dtype}: max abs {max(x[2] for x in sel):.3g}, max rel {max(x[3] for x in sel):.3g}, "
              f"all within tolerance: {all(x[4] for x in sel)}")


# ---------------------------------------------------------------------------
# Schedule-Free AdamW and SGD (schedule_free.json, --only schedule_free)
# ---------------------------------------------------------------------------

SCHEDULE_FREE_VERSION = "1.4.1"
SCHEDULE_FREE_STEPS = 60
# After these steps, x: the parameter after ``optimizer.eval()``.  The reference
# takes x from a copy of y and restores y afterwards, so that the trajectory is
# the one of an uninterrupted run in train mode.
SCHEDULE_FREE_EVAL_AT = [1, 10, 25, 60]
# CONFORMANCE.md "Rules v2": the defaults of schedulefree 1.4 (checked against
# the signatures when schedule_free.json is written).
SCHEDULE_FREE = {
    "schedule_free_adamw": {"lr": 0.0025, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                            "weight_decay": 0.0, "warmup_steps": 0, "r": 0.0,
                            "weight_lr_power": 2.0},
    "schedule_free_sgd": {"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": 0,
                          "r": 0.0, "weight_lr_power": 2.0},
}
# (rule, tag, hyper, groups): every key away from its default in a custom case;
# groups with their own rate and warmup, and a frozen group (lr 0: the weights
# of its average are 0 ** weight_lr_power).
SCHEDULE_FREE_CASES = [
    ("schedule_free_adamw", "defaults", {}, None),
    ("schedule_free_adamw", "custom",
     {"lr": 0.05, "beta1": 0.8, "beta2": 0.99, "eps": 1e-7, "weight_decay": 0.01,
      "warmup_steps": 10, "r": 0.5, "weight_lr_power": 1.5},
     [{"name": "g", "hyper": {"lr": 0.02, "warmup_steps": 25}},
      {"name": "frozen", "hyper": {"lr": 0.0, "weight_lr_power": 0.0}}]),
    ("schedule_free_sgd", "defaults", {}, None),
    ("schedule_free_sgd", "custom",
     {"lr": 0.1, "momentum": 0.7, "weight_decay": 0.05, "warmup_steps": 5, "r": 1.0,
      "weight_lr_power": 3.0},
     [{"name": "g", "hyper": {"lr": 0.3, "momentum": 0.95}},
      {"name": "frozen", "hyper": {"lr": 0.0}}]),
]
# Curvatures below 1, so that SGD's default rate 1 converges.
QUAD_GENTLE = {"init": [0.5, -1.5, 2.0, -0.25, 1.25, -3.0],
               "a": [0.15, 0.3, 0.45, 0.6, 0.75, 0.9],
               "b": [0.1, -0.2, 0.3, 0.0, 0.5, -0.4]}
QUAD3_GENTLE = {"init": [1.0, -2.0, 0.3, 0.7], "a": [0.55, 0.3, 0.8, 0.25],
                "b": [0.2, 0.0, -0.4, 0.3]}


def schedule_free_params(tag, dtype, seed):
    def seq(name, init, shape=(), zeros=(), **extra):
        grads = seq_grads(seed + zlib.crc32(name.encode()), width=numel(shape),
                          steps=SCHEDULE_FREE_STEPS, zeros=zeros)
        return seq_param(name, init, grads, dtype, shape=shape, **extra)

    custom = tag == "custom"
    return [quad_param("w", QUAD_GENTLE, dtype, layout="f"),
            seq("s", [0.5], zeros=(0, 20)),  # a zero first gradient: v = 0 at step 1
            quad_param("k", QUAD3_GENTLE, dtype, shape=(2, 1, 2), layout="f",
                       **({"group": "g"} if custom else {})),
            seq("v", [0.1, -0.2, 0.3, 0.05], shape=(4,), zeros=(7,),
                **({"group": "g"} if custom else {})),
            seq("f", [0.25, -0.5], shape=(2,), **({"group": "frozen"} if custom else {}))]


def schedule_free_case(rule, tag, hyper, groups, dtype):
    short = rule.replace("schedule_free_", "")
    case = {"name": f"schedulefree-{short}-{tag}-{dtype}", "optimizer": rule, "dtype": dtype,
            "hyper": dict(hyper)}
    if groups is not None:
        case["groups"] = [dict(g) for g in groups]
    case["params"] = schedule_free_params(tag, dtype, zlib.crc32(f"sf-{rule}-{tag}".encode()))
    case["steps"] = SCHEDULE_FREE_STEPS
    case["checkpoint_every"] = 0
    return case


def schedule_free_kwargs(rule, h):
    """Every constructor argument of the schedulefree class, spelled out."""
    common = {"lr": h["lr"], "weight_decay": h["weight_decay"], "warmup_steps": h["warmup_steps"],
              "r": h["r"], "weight_lr_power": h["weight_lr_power"]}
    if rule == "schedule_free_adamw":
        return {**common, "betas": (h["beta1"], h["beta2"]), "eps": h["eps"]}
    return {**common, "momentum": h["momentum"]}


def schedule_free_classes():
    import schedulefree

    return {"schedule_free_adamw": schedulefree.AdamWScheduleFree,
            "schedule_free_sgd": schedulefree.SGDScheduleFree}


def check_schedule_free_defaults():
    """SCHEDULE_FREE against the signatures of schedulefree's classes."""
    import inspect
    from importlib.metadata import version

    assert version("schedulefree") == SCHEDULE_FREE_VERSION, version("schedulefree")
    for rule, cls in schedule_free_classes().items():
        sig = inspect.signature(cls.__init__).parameters
        ours = schedule_free_kwargs(rule, SCHEDULE_FREE[rule])
        for key, value in ours.items():
            assert sig[key].default == value, (rule, key, sig[key].default, value)


def run_schedule_free(case):
    """schedulefree on a case (its defaults, foreach where torch has it): the
    trajectory of y in train mode, and x after the steps of SCHEDULE_FREE_EVAL_AT."""
    import torch

    dtype, rule = case["dtype"], case["optimizer"]
    T = NP_DTYPE[dtype]
    tensors = []
    for p in case["params"]:
        t = torch.from_numpy(np.array(p["init"], dtype=T).reshape(p["shape"]))
        tensors.append(torch.nn.Parameter(torch_layout(t, p.get("layout", "c"))))
    groups = []
    for gname in [None] + [g["name"] for g in case.get("groups", [])]:
        members = [t for p, t in zip(case["params"], tensors) if p.get("group") == gname]
        h = {**SCHEDULE_FREE[rule], **case["hyper"]}
        if gname is not None:
            h.update(next(g for g in case["groups"] if g["name"] == gname)["hyper"])
        if members:
            groups.append({"params": members, **schedule_free_kwargs(rule, h)})
    opt = schedule_free_classes()[rule](groups)
    opt.train()

    def flat(t):
        return np.array(t.detach().numpy(), copy=True).reshape(-1)  # row-major

    traj = {p["name"]: [] for p in case["params"]}
    evals = {p["name"]: [] for p in case["params"]}
    for step in range(1, case["steps"] + 1):
        for p, t in zip(case["params"], tensors):
            g = gradient(p, flat(t), step, dtype)
            t.grad = torch_layout(torch.from_numpy(g.reshape(p["shape"])), p.get("layout", "c"))
        opt.step()
        for p, t in zip(case["params"], tensors):
            traj[p["name"]].append([float(x) for x in flat(t)])
        if step in SCHEDULE_FREE_EVAL_AT:
            saved = [t.detach().clone() for t in tensors]
            opt.eval()
            for p, t in zip(case["params"], tensors):
                evals[p["name"]].append([float(x) for x in flat(t)])
            opt.train()
            with torch.no_grad():
                for t, y in zip(tensors, saved):
                    t.copy_(y)
    return traj, {"steps": list(SCHEDULE_FREE_EVAL_AT), "x": evals}


def write_schedule_free(version):
    check_schedule_free_defaults()
    entries = []
    for rule, tag, hyper, groups in SCHEDULE_FREE_CASES:
        for dtype in ("f64", "f32"):
            case = schedule_free_case(rule, tag, hyper, groups, dtype)
            traj, evals = run_schedule_free(case)
            frozen = [p for p in case["params"] if p.get("group") == "frozen"]
            check_trajectory({**case, "params": [p for p in case["params"] if p not in frozen]},
                             traj)
            for p in frozen:  # rate 0: y never moves
                assert all(row == traj[p["name"]][0] for row in traj[p["name"]]), case["name"]
            entries.append({"case": case, "source": "schedulefree", "trajectory": traj,
                            "eval": evals})
    n = write(HERE / "schedule_free.json",
              {"generator": GENERATOR, "torch_version": version,
               "schedulefree_version": SCHEDULE_FREE_VERSION, "cases": entries})
    print(f"schedule_free.json: {len(entries)} cases, {n} bytes")


# ---------------------------------------------------------------------------
# Prodigy (prodigy.json, --only prodigy)
# ---------------------------------------------------------------------------

PRODIGY_VERSION = "1.1.2"
PRODIGY_STEPS = 60
# CONFORMANCE.md "Rules v2": the defaults of prodigyopt 1.1 (None: beta3 =
# sqrt(beta2), growth_rate infinite; checked against the signature).
PRODIGY = {"lr": 1.0, "beta1": 0.9, "beta2": 0.999, "beta3": None, "eps": 1e-8,
           "weight_decay": 0.0, "decouple": True, "use_bias_correction": False,
           "safeguard_warmup": False, "d0": 1e-6, "d_coef": 1.0, "growth_rate": None}
# (tag, hyper, groups, schedule)
PRODIGY_CASES = [
    ("defaults", {}, None, None),
    ("decoupled", {"weight_decay": 0.1, "d0": 1e-3}, None, None),
    ("coupled", {"weight_decay": 0.05, "decouple": False}, None, None),
    ("bias-correction", {"use_bias_correction": True, "lr": 0.5}, None, None),
    ("safeguard", {"safeguard_warmup": True, "beta3": 0.9}, None, None),
    ("beta1-zero", {"beta1": 0.0, "weight_decay": 0.02, "decouple": False}, None, None),
    ("growth", {"growth_rate": 1.02, "d0": 1e-4}, None, None),
    ("d-coef", {"d_coef": 2.0, "beta2": 0.99, "eps": 1e-6}, None, None),
    ("groups", {"lr": 0.8},
     [{"name": "g", "hyper": {"weight_decay": 0.01, "eps": 1e-7}},
      {"name": "still", "hyper": {"lr": 0.0}}], None),
    ("schedule", {}, None, {"kind": "cosine", "t_max": 40, "eta_min": 0.05}),
]


def prodigy_params(tag, dtype, seed):
    def seq(name, init, shape=(), zeros=(), **extra):
        grads = seq_grads(seed + zlib.crc32(name.encode()), width=numel(shape),
                          steps=PRODIGY_STEPS, zeros=zeros)
        return seq_param(name, init, grads, dtype, shape=shape, **extra)

    grouped = tag == "groups"
    return [quad_param("w", QUAD[0], dtype, layout="f"),
            seq("s", [0.5], zeros=(0, 20)),
            quad_param("k", QUAD3, dtype, shape=(2, 1, 2), layout="f",
                       **({"group": "g"} if grouped else {})),
            seq("v", [0.1, -0.2, 0.3, 0.05], shape=(4,), zeros=(7,),
                **({"group": "still"} if grouped else {}))]


def prodigy_case(tag, hyper, groups, schedule, dtype):
    case = {"name": f"prodigy-{tag}-{dtype}", "optimizer": "prodigy", "dtype": dtype,
            "hyper": dict(hyper)}
    if groups is not None:
        case["groups"] = [dict(g) for g in groups]
    if schedule is not None:
        case["schedule"] = dict(schedule)
    case["params"] = prodigy_params(tag, dtype, zlib.crc32(f"prodigy-{tag}".encode()))
    case["steps"] = PRODIGY_STEPS
    case["checkpoint_every"] = 0
    return case


def prodigy_kwargs(h):
    """Every constructor argument of prodigyopt.Prodigy, spelled out."""
    return {"lr": h["lr"], "betas": (h["beta1"], h["beta2"]), "beta3": h["beta3"],
            "eps": h["eps"], "weight_decay": h["weight_decay"], "decouple": h["decouple"],
            "use_bias_correction": h["use_bias_correction"],
            "safeguard_warmup": h["safeguard_warmup"], "d0": h["d0"], "d_coef": h["d_coef"],
            "growth_rate": math.inf if h["growth_rate"] is None else h["growth_rate"]}


def check_prodigy_defaults():
    import inspect
    from importlib.metadata import version

    import prodigyopt

    assert version("prodigyopt") == PRODIGY_VERSION, version("prodigyopt")
    sig = inspect.signature(prodigyopt.Prodigy.__init__).parameters
    for key, value in prodigy_kwargs(PRODIGY).items():
        assert sig[key].default == value, (key, sig[key].default, value)


def run_prodigy(case):
    """prodigyopt on a case: every tensor's gradient, then one step; the
    schedule (if any) stepped after it."""
    import contextlib
    import io

    import torch
    from prodigyopt import Prodigy

    dtype = case["dtype"]
    T = NP_DTYPE[dtype]
    tensors = []
    for p in case["params"]:
        t = torch.from_numpy(np.array(p["init"], dtype=T).reshape(p["shape"]))
        tensors.append(torch.nn.Parameter(torch_layout(t, p.get("layout", "c"))))
    groups = []
    for gname in [None] + [g["name"] for g in case.get("groups", [])]:
        members = [t for p, t in zip(case["params"], tensors) if p.get("group") == gname]
        h = {**PRODIGY, **case["hyper"]}
        if gname is not None:
            h.update(next(g for g in case["groups"] if g["name"] == gname)["hyper"])
        if members:
            groups.append({"params": members, **prodigy_kwargs(h)})
    # The constructor's arguments are the case's: prodigyopt starts d (and
    # d_max) at the constructor's d0, whatever the groups say.
    with contextlib.redirect_stdout(io.StringIO()):  # its decoupled-decay notice
        opt = Prodigy(groups, **prodigy_kwargs({**PRODIGY, **case["hyper"]}))
    scheduler = torch_scheduler(opt, case.get("schedule"))

    def flat(t):
        return np.array(t.detach().numpy(), copy=True).reshape(-1)  # row-major

    traj = {p["name"]: [] for p in case["params"]}
    ds = []
    for step in range(1, case["steps"] + 1):
        for p, t in zip(case["params"], tensors):
            g = gradient(p, flat(t), step, dtype)
            t.grad = torch_layout(torch.from_numpy(g.reshape(p["shape"])), p.get("layout", "c"))
        opt.step()
        if scheduler is not None:
            scheduler.step()
        ds.append(opt.param_groups[0]["d"])
        for p, t in zip(case["params"], tensors):
            traj[p["name"]].append([float(x) for x in flat(t)])
    return traj, ds


def write_prodigy(version):
    check_prodigy_defaults()
    entries = []
    for tag, hyper, groups, schedule in PRODIGY_CASES:
        for dtype in ("f64", "f32"):
            case = prodigy_case(tag, hyper, groups, schedule, dtype)
            traj, ds = run_prodigy(case)
            still = [p for p in case["params"] if p.get("group") == "still"]
            check_trajectory({**case, "params": [p for p in case["params"] if p not in still]},
                             traj)
            for p in still:  # rate 0 and beta1 > 0: no first moment, no move
                assert all(row == p["init"] for row in traj[p["name"]]), case["name"]
            assert ds[-1] > 2 * ds[0], (case["name"], ds[0], ds[-1])  # d was estimated
            entries.append({"case": case, "source": "prodigyopt", "trajectory": traj,
                            "d": [float(d) for d in ds]})
    n = write(HERE / "prodigy.json",
              {"generator": GENERATOR, "torch_version": version,
               "prodigyopt_version": PRODIGY_VERSION, "cases": entries})
    print(f"prodigy.json: {len(entries)} cases, {n} bytes")
# L-BFGS (lbfgs.json, --only lbfgs): torch.optim.LBFGS with a closure over all
# tensors.  The closure's loss is the sum, in params order, of each tensor's J
# (quadratic: sum(a*t*t/2 - b*t); Rosenbrock: (1-x)**2 + 100*(y-x**2)**2) in the
# case's dtype, and each gradient is the replay harness's formula.  Parameters
# stay row-major in torch (LBFGS views gradients flat); one tensor is
# column-major in the replay.

LBFGS_STEPS = 25
LBFGS_QUAD = {"init": [0.5, -1.5, 2.0, -0.25, 1.25, -3.0],
              "a": [0.5, 2.0, 7.5, 1.0, 12.0, 20.0],
              "b": [0.1, -0.2, 0.3, 0.0, 0.5, -0.4]}
LBFGS_QUAD4 = {"init": [1.0, -2.0, 0.3, 0.7], "a": [3.0, 0.8, 5.5, 1.25],
               "b": [0.2, 0.0, -0.4, 0.3]}
LBFGS_CASES = [
    # (tag, objective, hyper[, dtypes])
    ("rosen-fixed-h3", "rosenbrock", {"lr": 0.02, "max_iter": 1, "history_size": 3}),
    ("rosen-fixed-iter5", "rosenbrock", {"lr": 0.25, "max_iter": 5, "history_size": 3}),
    ("rosen-wolfe-h3", "rosenbrock",
     {"max_iter": 1, "max_eval": 4, "history_size": 3, "line_search_fn": "strong_wolfe"}),
    ("rosen-wolfe-iter4", "rosenbrock",
     {"max_iter": 4, "history_size": 3, "line_search_fn": "strong_wolfe"}),
    # f64 only (the cases marked so): in f32 these reach the ball where loss and gradient
    # are rounding noise within the 25 steps, and where they wander there depends on the last
    # bit of every operation (MKL's f32 dot products reduce in their own order, and PyTorch's
    # f32 sqrt, MKL's, is not correctly rounded), so no tolerance short of the ball's radius
    # holds. The f32 cases stop short of it.
    ("rosen-wolfe-defaults", "rosenbrock", {"line_search_fn": "strong_wolfe"}, ("f64",)),
    ("rosen-fixed-slow", "rosenbrock", {"lr": 0.002}),
    ("quad-fixed-defaults", "quadratic", {"lr": 0.05}, ("f64",)),
    ("quad-fixed-h3", "quadratic", {"lr": 0.05, "max_iter": 1, "history_size": 3}),
    ("quad-wolfe-h3", "quadratic",
     {"max_iter": 2, "history_size": 3, "line_search_fn": "strong_wolfe"}, ("f64",)),
    ("quad-wolfe-defaults", "quadratic", {"line_search_fn": "strong_wolfe"}, ("f64",)),
    ("quad-wolfe-tolerances", "quadratic",
     {"max_iter": 3, "max_eval": 5, "tolerance_grad": 1e-3, "tolerance_change": 1e-4,
      "line_search_fn": "strong_wolfe"}),
]
LBFGS_DEFAULTS = {"lr": 1.0, "max_iter": 20, "max_eval": None, "tolerance_grad": 1e-7,
                  "tolerance_change": 1e-9, "history_size": 100, "line_search_fn": None}


def lbfgs_case(tag, objective, hyper, dtype):
    if objective == "rosenbrock":
        params = [rosen_param("xy", [-1.5, 2.0], dtype)]
    else:
        params = [quad_param("w", LBFGS_QUAD, dtype, layout="f"),
                  quad_param("v", LBFGS_QUAD4, dtype, shape=(4,)),
                  quad_param("s", {"init": [2.0], "a": [4.0], "b": [1.0]}, dtype, shape=())]
    return {"name": f"lbfgs-{tag}-{dtype}", "optimizer": "lbfgs", "dtype": dtype,
            "hyper": dict(hyper), "params": params, "steps": LBFGS_STEPS,
            "checkpoint_every": 0}


def run_lbfgs(case):
    """torch.optim.LBFGS on a case; also the evaluations per step."""
    import inspect
    import torch

    sig = inspect.signature(torch.optim.LBFGS.__init__).parameters
    for key, value in LBFGS_DEFAULTS.items():
        assert sig[key].default == value, (key, sig[key].default, value)
    T = NP_DTYPE[case["dtype"]]
    tensors = [torch.nn.Parameter(torch.from_numpy(np.array(p["init"], dtype=T).reshape(p["shape"])))
               for p in case["params"]]
    consts = [{k: torch.from_numpy(np.array(v, dtype=T).reshape(p["shape"]))
               for k, v in p["objective"].items() if k != "kind"} for p in case["params"]]
    opt = torch.optim.LBFGS(tensors, **{**LBFGS_DEFAULTS, **case["hyper"]})

    def closure():
        total = None
        with torch.no_grad():
            for p, t, c in zip(case["params"], tensors, consts):
                if p["objective"]["kind"] == "quadratic":
                    a, b = c["a"], c["b"]
                    t.grad = a * t - b
                    j = (a * t * t / 2 - b * t).sum()
                else:
                    x, y = t[0], t[1]
                    d = y - x * x
                    t.grad = torch.stack([-2 * (1 - x) - 400 * x * d, 200 * d])
                    j = (1 - x) ** 2 + 100 * d ** 2
                total = j if total is None else total + j
        return total

    traj = {p["name"]: [] for p in case["params"]}
    evals, losses = [], []
    for _ in range(case["steps"]):
        before = opt.state[tensors[0]].get("func_evals", 0)
        losses.append(float(opt.step(closure)))
        evals.append(opt.state[tensors[0]]["func_evals"] - before)
        for p, t in zip(case["params"], tensors):
            traj[p["name"]].append([float(x) for x in t.detach().numpy().reshape(-1)])
    return traj, evals, losses


def write_lbfgs(version):
    entries = []
    for tag, objective, hyper, *dtypes in LBFGS_CASES:
        for dtype in (dtypes[0] if dtypes else ("f64", "f32")):
            case = lbfgs_case(tag, objective, hyper, dtype)
            traj, evals, losses = run_lbfgs(case)
            # A case may converge within its first step and stay: it has to move, not to
            # keep moving.
            for p in case["params"]:
                rows = traj[p["name"]]
                assert len(rows) == case["steps"], case["name"]
                assert all(math.isfinite(x) for row in rows for x in row), case["name"]
            assert any(traj[p["name"]][0] != p["init"] for p in case["params"]), case["name"]
            print(f"  {case['name']}: evaluations per step {evals}, final loss {losses[-1]:.3e}")
            entries.append({"case": case, "source": "pytorch", "trajectory": traj,
                            "evaluations": evals, "losses": losses})
    n = write(HERE / "lbfgs.json", {"generator": GENERATOR, "torch_version": version,
                                    "cases": entries})
    print(f"lbfgs.json: {len(entries)} cases, {n} bytes")


# ---------------------------------------------------------------------------
# Low-precision optimizer state (lowbit.json, --only lowbit)
# ---------------------------------------------------------------------------

TORCHAO_VERSION = "0.18.0"
LOWBIT_BLOCK = 256
LOWBIT_MIN_NUMEL = 4096  # torchao (after bitsandbytes) quantizes tensors this large only
LOWBIT_STEPS = 10
LOWBIT_ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
               "amsgrad": False}
# (name, optimizer, shape, hyper); torchao's optimizers on numel >= LOWBIT_MIN_NUMEL.
# No amsgrad case: torchao 0.18 raises NotImplementedError for it (OptimState8bit
# does not implement aten.maximum, eager or compiled).
LOWBIT_TORCHAO = [
    ("torchao-adamw8bit-64x64", "AdamW8bit", (64, 64), (0, 13),
     {"lr": 1e-2, "weight_decay": 0.01}),
    ("torchao-adam8bit-4096", "Adam8bit", (4096,), (6,), {"weight_decay": 0.01}),
]
# (name, rule, precision, shape, active blocks, hyper): torch.optim's op sequence,
# moments stored in low precision between steps.
LOWBIT_TORCH_OPS = [
    ("torch-ops-adamw-int8-amsgrad-64x64", "adamw", "int8", (64, 64), (9,),
     {"lr": 1e-2, "weight_decay": 0.01, "amsgrad": True}),
    ("torch-ops-adam-int8-tail-4196", "adam", "int8", (4196,), (10,), {}),
    ("torch-ops-adamw-bf16-4x16", "adamw", "bf16", (4, 16), None, {"weight_decay": 0.01}),
    ("torch-ops-adamw-bf16-3x5", "adamw", "bf16", (3, 5), None,
     {"lr": 1e-2, "weight_decay": 0.01}),
    ("torch-ops-adam-bf16-amsgrad-7", "adam", "bf16", (7,), None,
     {"lr": 1e-2, "amsgrad": True, "beta2": 0.99, "eps": 1e-6}),
    ("torch-ops-adam-bf16-2x3x4", "adam", "bf16", (2, 3, 4), None, {"weight_decay": 0.01}),
]


def lowbit_num(x):
    """An f32 as a JSON value: the number itself, or "nan", "inf", "-inf"."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def lowbit_f32s(t):
    return [lowbit_num(x) for x in t.reshape(-1).tolist()]


def lowbit_qmap(signed):
    import torch
    from torchao.optim.quant_utils import create_dynamic_map

    return torch.tensor(create_dynamic_map(signed=signed), dtype=torch.float32)


def lowbit_quantize(x, signed):
    """torchao's block-wise 8-bit quantization of a flat f32 tensor: codes, scales,
    dequantized values.  A last block shorter than LOWBIT_BLOCK (which torchao
    never quantizes) is quantized on its own, scaled by its own absmax."""
    import torch
    from torchao.optim.quant_utils import dequant_with_qmap, quantize_8bit_with_qmap, scale_tensor

    qmap = lowbit_qmap(signed)
    full = x.numel() - x.numel() % LOWBIT_BLOCK
    codes, scales, deq = [], [], []
    for part, block in ((x[:full], LOWBIT_BLOCK), (x[full:], x.numel() - full)):
        if part.numel() == 0:
            continue
        scaled, scale = scale_tensor(part, block)
        c = quantize_8bit_with_qmap(scaled, qmap)
        codes.append(c)
        scales.append(scale)
        deq.append(dequant_with_qmap(c, qmap, scale))
    return torch.cat(codes), torch.cat(scales), torch.cat(deq)


def lowbit_quantize_cases():
    """(name, signed, f32 input) of the `quantize` section."""
    import torch

    rng = np.random.default_rng(zlib.crc32(b"lowbit-quantize"))
    f32 = np.float32
    block = LOWBIT_BLOCK

    def normal(n=2 * block):
        return rng.standard_normal(n)

    cases = []
    for signed in (True, False):
        tag = "signed" if signed else "unsigned"
        sign = (lambda a: a) if signed else np.abs
        q = lowbit_qmap(signed).numpy()
        for mag in (1e-8, 1.0, 1e3):
            cases.append((f"normal-{mag:g}-{tag}", signed, sign(normal() * mag)))
        # every block its own magnitude, elements spread over 1e-8 .. 1e3
        wide = normal() * 10.0 ** rng.uniform(-8, 3, 2 * block)
        cases.append((f"wide-{tag}", signed, sign(wide)))
        cases.append((f"zeros-then-normal-{tag}", signed,
                      np.concatenate([np.zeros(block), sign(normal(block))])))
        # every code, exactly, times 2^-10 (exact) and 3 (inexact)
        cases.append((f"codes-{tag}", signed,
                      np.concatenate([q.astype(np.float64) * s for s in (2.0 ** -10, 3.0)])))
        # the midpoints between neighbouring codes (ties: rounded up) times 2^-10
        # (exact ties) and 1e3 (scaled back inexactly); then one ulp below and above
        # them, times 2^-10.  Each block's last element, 1.0 times the factor, makes
        # the factor its scale.
        mids = f32((q[:-1].astype(np.float64) + q[1:]) / 2)
        below, above = np.nextafter(mids, f32(-np.inf)), np.nextafter(mids, f32(np.inf))

        def blocks(*pairs):
            return np.concatenate([np.concatenate([v, [f32(1.0)]]).astype(np.float64) * s
                                   for v, s in pairs])

        cases.append((f"mid-{tag}", signed, blocks((mids, 2.0 ** -10), (mids, 1e3))))
        cases.append((f"near-mid-{tag}", signed, blocks((below, 2.0 ** -10), (above, 2.0 ** -10))))
        # below the smallest nonzero code (halfway to it, either side, far below)
        small = float(q[q > 0].min())
        tiny = [small / 2, float(np.nextafter(f32(small / 2), f32(0))),
                float(np.nextafter(f32(small / 2), f32(1))), small / 4, small * 0.9, 1e-30, 0.0]
        tiny = np.array(tiny * 37)[:block - 1]
        tiny_block = np.concatenate([sign(tiny * np.where(np.arange(block - 1) % 2, -1, 1)), [1.0]])
        cases.append((f"tiny-{tag}", signed, np.concatenate([tiny_block, tiny_block * 2.0 ** 20])))
        # subnormals: a block of them alone (scale clipped to 1e-12), and beside 1.0
        sub = np.array([1e-45, 1e-40, 1.1754942e-38, 5e-39, 3e-42] * 52)[:block] * \
            (np.where(np.arange(block) % 3, 1, -1) if signed else 1)
        cases.append((f"subnormals-{tag}", signed,
                      np.concatenate([sub, np.concatenate([sub[:-1], [1.0]])])))
        # non-finite: one +inf, one NaN, each in the first block, finite second block
        for bad in (np.inf, np.nan):
            x = sign(normal())
            x[5] = bad
            cases.append((f"{'inf' if bad == np.inf else 'nan'}-{tag}", signed, x))
        ones = np.concatenate([np.ones(block), sign(np.where(np.arange(block) % 2, -1.0, 1.0))])
        cases.append((f"one-{tag}", signed, ones))
    neg = normal()
    neg[3], neg[block + 7] = -40.0, -1.0e-3 * 50
    neg[block:] *= 1e-3
    cases.append(("max-abs-negative-signed", True, neg))
    out = []
    for name, signed, x in cases:
        x = np.asarray(x, dtype=np.float32)
        assert x.size % block == 0 and x.size >= 2 * block, name
        assert signed or not (x < 0).any(), name
        out.append((name, signed, torch.from_numpy(x)))
    return out


def lowbit_bf16_inputs():
    """f32 inputs of the `bf16` section, from their bit patterns."""
    bits = [
        0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000,  # ties: even stays, odd rounds up
        0x3F808001, 0x3F807FFF, 0x3F818001, 0x3F817FFF,  # just above / below halfway
        0xBF808001, 0xBF807FFF, 0x4049_0FDB, 0x3DCC_CCCD,  # ... and pi, 0.1
        0x3F80FFFF, 0x3FFFFFFF, 0x7F7F7FFF, 0x7F7F8000,  # carry into the exponent; largest
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F0000,  # max finite f32 rounds to inf
        0x00000001, 0x00008000, 0x00018000, 0x00007FFF, 0x00008001,  # subnormals
        0x007FFFFF, 0x007F8000, 0x807FFFFF, 0x80000001, 0x00800000,
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000,  # 0, -0, inf, -inf, NaN
    ]
    rng = np.random.default_rng(zlib.crc32(b"lowbit-bf16"))
    rand = (rng.standard_normal(64) * 10.0 ** rng.uniform(-30, 30, 64)).astype(np.float32)
    x = np.concatenate([np.array(bits, dtype=np.uint32).view(np.float32), rand])
    return x


def lowbit_grads(name, shape, active):
    """Initial parameter and LOWBIT_STEPS gradients: normals with magnitudes spread
    over 1e-4 .. 10 across elements, times a factor that changes from step to step.
    Only the blocks of LOWBIT_BLOCK elements listed in ``active`` (None: all) and
    a partial last block are nonzero; the others are zero in the parameter and in
    every gradient, so they stay zero (and keep the JSON small)."""
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    keep = torch.ones(shape, dtype=torch.bool)
    if active is not None:
        flat = keep.view(-1)
        full = flat.numel() - flat.numel() % LOWBIT_BLOCK
        flat[:full] = False
        for b in active:
            flat[b * LOWBIT_BLOCK:(b + 1) * LOWBIT_BLOCK] = True

    def zeroed(x):
        return torch.where(keep, x, 0.0)  # +0.0, not the -0.0 of a product

    param = zeroed(torch.randn(shape, generator=gen) * 0.5)
    grads = []
    for _ in range(LOWBIT_STEPS):
        spread = 10.0 ** (torch.rand(shape, generator=gen) * 5 - 4)
        factor = 10.0 ** (torch.rand((), generator=gen) * 1.5 - 1)
        grads.append(zeroed(torch.randn(shape, generator=gen) * spread * factor))
    return param, grads


def lowbit_store(precision, x, signed):
    """(stored form for the JSON, values loaded back)."""
    import torch

    if precision == "bf16":
        b = x.to(torch.bfloat16)
        return {"bits": (b.view(torch.int16).int() & 0xFFFF).reshape(-1).tolist()}, b.float()
    codes, scales, deq = lowbit_quantize(x.reshape(-1), signed)
    return ({"codes": codes.int().tolist(), "scales": lowbit_f32s(scales)},
            deq.reshape(x.shape))


def lowbit_torch_ops(rule, precision, hyper, param, grads, square_lerp=False):
    """torch.optim.Adam/AdamW's single-tensor f32 ops (_single_tensor_adam) on
    working copies of the moments; after each step every moment is stored in
    ``precision`` and the next step starts from the stored value loaded back.
    ``square_lerp`` updates exp_avg_sq by lerp, as torchao does (comparison only)."""
    import torch

    h = hyper
    p = param.clone()
    names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if h["amsgrad"] else [])
    state = {n: torch.zeros_like(p) for n in names}
    stored, params = {}, []
    for step, grad in enumerate(grads, 1):
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if h["weight_decay"] != 0:
            if rule == "adamw":
                p.mul_(1 - h["lr"] * h["weight_decay"])
            else:
                grad = grad.add(p, alpha=h["weight_decay"])
        m.lerp_(grad, 1 - h["beta1"])
        if square_lerp:
            v.lerp_(grad.square(), 1 - h["beta2"])
        else:
            v.mul_(h["beta2"]).addcmul_(grad, grad.conj(), value=1 - h["beta2"])
        bias_correction1 = 1 - h["beta1"] ** step
        bias_correction2 = 1 - h["beta2"] ** step
        step_size = h["lr"] / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        if h["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            torch.maximum(vmax, v, out=vmax)
            denom = (vmax.sqrt() / bias_correction2_sqrt).add_(h["eps"])
        else:
            denom = (v.sqrt() / bias_correction2_sqrt).add_(h["eps"])
        p.addcdiv_(m, denom, value=-step_size)
        for n in names:
            stored[n], loaded = lowbit_store(precision, state[n], n == "exp_avg")
            state[n].copy_(loaded)
        params.append(p.clone())
    return params, stored


def lowbit_torchao(optimizer, hyper, param, grads, compiled):
    """torchao's optimizer; ``compiled`` False runs single_param_adam eagerly
    (torch.compiler stance "force_eager"), True as torchao does (torch.compile)."""
    import contextlib

    import torch
    import torchao.optim

    h = hyper
    p = torch.nn.Parameter(param.clone())
    opt = getattr(torchao.optim, optimizer)(
        [p], lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
        weight_decay=h["weight_decay"], amsgrad=h["amsgrad"], block_size=LOWBIT_BLOCK)
    stance = contextlib.nullcontext() if compiled else torch.compiler.set_stance("force_eager")
    params = []
    with stance:
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
            params.append(p.detach().clone())
    state = opt.state[p]
    return params, {n: state[n] for n in ("exp_avg", "exp_avg_sq")}


def lowbit_diff(a, b, lr):
    """Largest |a - b|, the same over lr, and largest |a - b| / |b| over |b| > 1e-3."""
    d = (a.double() - b.double()).abs()
    big = b.double().abs() > 1e-3
    return (f"abs {float(d.max()):.3g} = {float(d.max()) / lr:.3g} lr, "
            f"rel {float((d[big] / b.double().abs()[big]).max()):.3g}")


def write_lowbit(version):
    import warnings
    from importlib.metadata import version as dist_version

    import torch

    warnings.filterwarnings("ignore", module="torch._functorch")
    assert dist_version("torchao") == TORCHAO_VERSION, dist_version("torchao")
    from torchao.optim.subclass_8bit import OptimState8bit

    quantize = []
    for name, signed, x in lowbit_quantize_cases():
        codes, scales, deq = lowbit_quantize(x, signed)
        quantize.append({"name": name, "signed": signed, "input": lowbit_f32s(x),
                         "codes": codes.int().tolist(), "scales": lowbit_f32s(scales),
                         "dequantized": lowbit_f32s(deq)})
    bf16_in = torch.from_numpy(lowbit_bf16_inputs())
    bf16 = {"input": lowbit_f32s(bf16_in),
            "bits": (bf16_in.to(torch.bfloat16).view(torch.int16).int() & 0xFFFF).tolist()}

    def entry(name, reference, rule, precision, hyper, param, grads, params, stored):
        for row in params:
            assert bool(torch.isfinite(row).all()), name
        assert not torch.equal(params[0], params[-1]), name
        return {"name": name, "reference": reference, "rule": rule, "precision": precision,
                "hyper": hyper, "shape": list(param.shape), "param": lowbit_f32s(param),
                "grads": [lowbit_f32s(g) for g in grads],
                "params": [lowbit_f32s(row) for row in params], "state": stored}

    steps, printed = [], []
    for name, optimizer, shape, active, hyper in LOWBIT_TORCHAO:
        h = {**LOWBIT_ADAM, **hyper}
        rule = "adamw" if optimizer.startswith("AdamW") else "adam"
        param, grads = lowbit_grads(name, shape, active)
        params, state = lowbit_torchao(optimizer, h, param, grads, compiled=False)
        for s in state.values():
            assert isinstance(s, OptimState8bit) and s.block_size == LOWBIT_BLOCK, name
        stored = {n: {"codes": s.codes.reshape(-1).int().tolist(), "scales": lowbit_f32s(s.scale)}
                  for n, s in state.items()}
        steps.append(entry(name, "torchao", rule, "int8", h, param, grads, params, stored))
        c_params, c_state = lowbit_torchao(optimizer, h, param, grads, compiled=True)
        ops, _ = lowbit_torch_ops(rule, "int8", h, param, grads)
        ops_lerp, _ = lowbit_torch_ops(rule, "int8", h, param, grads, square_lerp=True)
        lr = h["lr"]
        printed.append((name, [
            f"compiled: {lowbit_diff(c_params[-1], params[-1], lr)}, "
            f"{int((c_params[-1] != params[-1]).sum())} elements differ, "
            f"{sum(int((c_state[n].codes != state[n].codes).sum()) for n in state)} codes, "
            f"{sum(int((c_state[n].scale != state[n].scale).sum()) for n in state)} scales",
            f"torch_ops: {lowbit_diff(ops[-1], params[-1], lr)}",
            f"torch_ops, exp_avg_sq by lerp: {lowbit_diff(ops_lerp[-1], params[-1], lr)}"]))
    for name, rule, precision, shape, active, hyper in LOWBIT_TORCH_OPS:
        h = {**LOWBIT_ADAM, **hyper}
        param, grads = lowbit_grads(name, shape, active)
        params, stored = lowbit_torch_ops(rule, precision, h, param, grads)
        steps.append(entry(name, "torch_ops", rule, precision, h, param, grads, params, stored))

    n = write(HERE / "lowbit.json",
              {"generator": GENERATOR, "torch_version": version,
               "torchao_version": TORCHAO_VERSION, "block_size": LOWBIT_BLOCK,
               "min_numel": LOWBIT_MIN_NUMEL, "qmap_signed": lowbit_f32s(lowbit_qmap(True)),
               "qmap_unsigned": lowbit_f32s(lowbit_qmap(False)), "quantize": quantize,
               "bf16": bf16, "steps": steps})
    print(f"lowbit.json: {len(quantize)} quantize cases, {len(bf16['bits'])} bf16 values, "
          f"{len(steps)} step cases, {n} bytes")
    for e in steps:
        used = [len(set(s["codes"])) for s in e["state"].values() if "codes" in s]
        if used:
            print(f"  {e['name']}: distinct codes in the final state {used}")
    print("torchao cases: last parameters of other runs against the fixture (eager torchao)")
    for name, lines in printed:
        print(f"  {name}")
        for line in lines:
            print(f"    {line}")


# ---------------------------------------------------------------------------

def import_torch(args):
    """Imports torch, pinned to TORCH_VERSION; returns its version."""
    import torch

    version = torch.__version__.split("+")[0]
    if version != TORCH_VERSION and not args.any_torch:
        sys.exit(f"error: torch {torch.__version__} found, fixtures are pinned to {TORCH_VERSION}")
    torch.set_num_threads(1)
    return version


def main():
    if sys.argv[1:2] == ["--optax-worker"]:  # internal: see optax_trajectories
        optax_worker(sys.argv[2])
        return
    only = {"training": write_training, "defaults": write_defaults, "rules_v2": write_rules_v2,
            "schedules_v2": write_schedules_v2, "averaging": write_averaging,
            "lambda": write_lambda, "schedule_free": write_schedule_free,
            "prodigy": write_prodigy, "lbfgs": write_lbfgs, "lowbit": write_lowbit}
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-torch", action="store_true", help="write seed.json only")
    ap.add_argument("--any-torch", action="store_true", help="accept a torch other than 2.15.0")
    ap.add_argument("--any-optax", action="store_true", help="accept an optax other than 0.2.8")
    ap.add_argument("--no-cross-check", action="store_true")
    ap.add_argument("--only", choices=sorted(only), help="write one PyTorch file only")
    ap.add_argument("--training-only", action="store_const", const="training", dest="only",
                    help="the same as --only training")
    args = ap.parse_args()
    ANY_OPTAX[0] = args.any_optax
    t0 = time.perf_counter()

    if args.only:
        only[args.only](import_torch(args))
        return

    # seed.json
    seed_entries = checked_entries(build_cases("seed"), run_seed, source="seed")
    hand_entries = checked_entries((case for case, _ in HAND_CASES), run_seed, source="seed")
    for (case, expect), entry in zip(HAND_CASES, hand_entries):
        for name, rows in expect.items():
            got = np.array(entry["trajectory"][name])
            assert np.allclose(got, rows, rtol=1e-15, atol=0), (case["name"], name, got, rows)
    seed_entries += hand_entries
    n = write(HERE / "seed.json", {"generator": GENERATOR, "cases": seed_entries})
    print(f"seed.json: {len(seed_entries)} cases, {n} bytes")

    if args.no_torch:
        return
    version = import_torch(args)

    torch_entries = checked_entries(build_cases("pytorch"), run_torch)
    n = write(HERE / "pytorch.json", {"generator": GENERATOR, "torch_version": version,
                                      "cases": torch_entries})
    print(f"pytorch.json: {len(torch_entries)} cases, {n} bytes")
    write_extensions(version)
    write_training(version)
    write_defaults(version)
    write_rules_v2(version)
    write_schedules_v2(version)
    write_averaging(version)
    write_lambda(version)
    write_schedule_free(version)
    write_prodigy(version)
    write_lbfgs(version)
    write_lowbit(version)
    print(f"generation took {time.perf_counter() - t0:.2f} s")

    if not args.no_cross_check:
        cross_check(torch_entries, seed_entries)


if __name__ == "__main__":
    main()
