#!/usr/bin/env bash
# CPU time to rebuild a small user binary of ndarray-optim after touching its main.rs.
#
#   benches/build-time/run.sh CRATE_DIR [SNIPPET_FILE]
#
# Makes a throwaway binary crate in a temporary directory that depends on the crate at
# CRATE_DIR by path, builds it once per row (dev, dev without incremental, release: below) so
# that every dependency is compiled, runs the program once, then N times touches src/main.rs
# and rebuilds it, and prints the median CPU seconds (user + sys of cargo and everything it
# ran and waited for: rustc, the linker, as GNU time reports them, cross-checked against
# bash's `times`) and the median wall seconds of those rebuilds, per row. Only the user binary
# is recompiled in a measured rebuild (checked), so the time is what the crate's generics cost
# in a user's build. Dependencies are pinned by a copy of CRATE_DIR/Cargo.lock, and built into
# a CARGO_TARGET_DIR of their own inside the temporary directory.
#
# The program (written below) steps one optimizer in f32 with two parameter groups, "hidden"
# and "rest", on tensors of dimension Ix1, Ix2 and IxDyn, with both `step` and `step_all`.
# Everything that names a rule type or builds the optimizer is in one block of main.rs,
# between the lines `// BEGIN OPTIMIZER` and `// END OPTIMIZER`. SNIPPET_FILE, if given,
# replaces that block (the marker lines stay). A snippet is Rust statements inside `fn main()
# -> Result<(), Box<dyn std::error::Error>>`, which must:
#   - import what it uses (`use ndarray_optim::{...};` is allowed inside a function body);
#   - bind `let mut opt = ...;`, an optimizer for f32 tensors on which the rest of main calls
#     `opt.step(name, &mut param, &grad)?` with param and grad `Array<f32, D>` for D = Ix1,
#     Ix2 and IxDyn, and `opt.step_all(&mut [ndarray_optim::ParamGrad::new(name, &mut p, &g),
#     ...])?` with a batch mixing those dimensions;
#   - put tensor "hidden.w" (a 2-D matrix, 32×16, stepped as Ix2) in group "hidden", and
#     "hidden.b" (Ix1, 32), "out.w" (IxDyn, 4×32) and "out.b" (Ix1, 4) in group "rest".
# The default snippet (today's API, whose `Optimizer<R, A>` has one rule type) is the block
# in main.rs below: Adam in both groups, with different hyperparameters.
#
# Rows (ROWS, default "dev dev-noincr release"):
#   dev         `cargo build`: the dev profile as a user has it, incremental. A touched but
#               unchanged main.rs reuses nearly all of the incremental cache, so this is mostly
#               cargo's and the linker's fixed cost.
#   dev-noincr  `cargo build` with CARGO_INCREMENTAL=0 (as CI builds usually are): the dev
#               profile compiling all of main.rs again, with every instance of the crate's
#               generics that the dependency does not already provide.
#   release     `cargo build --release` (not incremental): every instance, optimized.
#
# Environment: N (rebuilds per row, default 3), JOBS (cargo -j, default 2), ROWS (above),
# KEEP=1 (keep the temporary directory and print its path).
# Needs GNU time at /usr/bin/time (Debian package `time`).
set -euo pipefail

usage() { echo "usage: $0 CRATE_DIR [SNIPPET_FILE]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
crate_dir=$(cd "$1" && pwd) || usage
[[ -f $crate_dir/Cargo.toml ]] || { echo "no Cargo.toml in $crate_dir" >&2; exit 2; }
snippet=${2:-}
if [[ -n $snippet ]]; then
    [[ -f $snippet ]] || { echo "no snippet file $snippet" >&2; exit 2; }
fi
runs=${N:-3}
rows=${ROWS:-dev dev-noincr release}
jobs=${JOBS:-2}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive integer" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 2; }

# A compiler wrapper (sccache) would move the work into a server that is not a child of
# cargo, and out of the measurement; incremental settings from the environment would change
# what a rebuild does.
unset RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_INCREMENTAL

work=$(mktemp -d "${TMPDIR:-/tmp}/ndarray-optim-build-time.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
    echo "temporary directory (kept): $work" >&2
else
    trap 'rm -rf "$work"' EXIT
fi
user=$work/user
mkdir -p "$user/src"
export CARGO_TARGET_DIR=$work/target

# The dependency's own ndarray requirement, so that the user's arrays are its arrays.
ndarray_req=$(sed -n 's/^ndarray *= *\("[^"]*"\).*/\1/p; s/^ndarray *= *{[^}]*version *= *\("[^"]*"\).*/\1/p' \
    "$crate_dir/Cargo.toml" | head -n 1)
[[ -n $ndarray_req ]] || ndarray_req='"0.17"'

cat > "$user/Cargo.toml" <<TOML
[package]
name = "build-time-user"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
ndarray = $ndarray_req
ndarray-optim = { path = "$crate_dir" }

# Not a member of any workspace above the temporary directory.
[workspace]
TOML
# The crate's own lock file pins the dependencies' versions (cargo adds the user package
# and drops what the user does not need).
if [[ -f $crate_dir/Cargo.lock ]]; then
    cp "$crate_dir/Cargo.lock" "$user/Cargo.lock"
fi

cat > "$user/src/main.rs" <<'RUST'
//! A small user of ndarray-optim, compiled to measure what its generics cost a user's build.

use ndarray::{Array1, Array2, ArrayD, IxDyn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // BEGIN OPTIMIZER
    use ndarray_optim::{Adam, Optimizer};
    let mut opt = Optimizer::<Adam, f32>::new(Adam::default())?;
    opt.add_group("hidden", Adam { lr: 2e-2, beta2: 0.95, ..Adam::default() })?;
    opt.add_group("rest", Adam { lr: 3e-4, weight_decay: 1e-2, ..Adam::default() })?;
    opt.assign("hidden.w", "hidden")?;
    for name in ["hidden.b", "out.w", "out.b"] {
        opt.assign(name, "rest")?;
    }
    // END OPTIMIZER

    let mut hidden_w = Array2::<f32>::from_shape_fn((32, 16), |(i, j)| ((i * 16 + j) as f32).sin());
    let mut hidden_b = Array1::<f32>::zeros(32);
    let mut out_w = ArrayD::<f32>::from_shape_fn(IxDyn(&[4, 32]), |ix| ((ix[0] + ix[1]) as f32).cos());
    let mut out_b = Array1::<f32>::zeros(4);
    for t in 0..10 {
        let scale = 1.0 / (1.0 + t as f32);
        let grad_hidden_w = hidden_w.mapv(|w| w * scale);
        let grad_hidden_b = Array1::<f32>::from_elem(32, 0.1 * scale);
        let grad_out_w = out_w.mapv(|w| w - scale);
        let grad_out_b = Array1::<f32>::from_elem(4, -0.2 * scale);
        if t % 2 == 0 {
            opt.step("hidden.w", &mut hidden_w, &grad_hidden_w)?;
            opt.step("hidden.b", &mut hidden_b, &grad_hidden_b)?;
            opt.step("out.w", &mut out_w, &grad_out_w)?;
            opt.step("out.b", &mut out_b, &grad_out_b)?;
        } else {
            opt.step_all(&mut [
                ndarray_optim::ParamGrad::new("hidden.w", &mut hidden_w, &grad_hidden_w),
                ndarray_optim::ParamGrad::new("hidden.b", &mut hidden_b, &grad_hidden_b),
                ndarray_optim::ParamGrad::new("out.w", &mut out_w, &grad_out_w),
                ndarray_optim::ParamGrad::new("out.b", &mut out_b, &grad_out_b),
            ])?;
        }
    }
    let sum = hidden_w.sum() + hidden_b.sum() + out_w.sum() + out_b.sum();
    println!("checksum {sum:.6}");
    Ok(())
}
RUST

if [[ -n $snippet ]]; then
    main=$user/src/main.rs
    begin=$(grep -n '^ *// BEGIN OPTIMIZER$' "$main" | cut -d: -f1)
    end=$(grep -n '^ *// END OPTIMIZER$' "$main" | cut -d: -f1)
    { head -n "$begin" "$main"; cat "$snippet"; tail -n "+$end" "$main"; } > "$work/main.rs"
    mv "$work/main.rs" "$main"
fi

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Seconds of user + sys of this shell's terminated children so far (bash `times`, 2nd line),
# into the file $1. `times` runs in this shell (a subshell, as in $(times), would count its
# own children only).
children_cpu() {
    times > "$1.times"
    sed -n 2p "$1.times" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /m|s/); s += a[1] * 60 + a[2] } print s }' > "$1"
}

echo "crate:   $crate_dir ($(git -C "$crate_dir" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
echo "snippet: ${snippet:-default (Adam in both groups)}"
echo "rustc:   $(rustc --version)"
echo "cpu:     $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores; cargo -j $jobs; $runs rebuilds per row"
[[ -z ${RUSTFLAGS:-} ]] || echo "RUSTFLAGS: $RUSTFLAGS"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before)"

cd "$user"
results=()
for profile in $rows; do
    flag=(); incremental=()
    case $profile in
        dev) ;;
        dev-noincr) incremental=(CARGO_INCREMENTAL=0) ;;
        release) flag=(--release) ;;
        *) echo "unknown row $profile (ROWS: dev, dev-noincr, release)" >&2; exit 2 ;;
    esac
    echo "[$profile] warm build (all dependencies)..." >&2
    if ! env "${incremental[@]}" cargo build "${flag[@]}" -j "$jobs" > "$work/warm.log" 2>&1; then
        cat "$work/warm.log" >&2
        echo "the warm build failed" >&2
        exit 1
    fi
    bin_dir=$CARGO_TARGET_DIR/$([[ $profile == release ]] && echo release || echo debug)
    "$bin_dir/build-time-user" > "$work/run.log" || { echo "the program failed" >&2; exit 1; }
    cpus=(); walls=()
    for ((i = 1; i <= runs; i++)); do
        sleep 1 # a later mtime than the last build's outputs, whatever the file system's resolution
        touch src/main.rs
        children_cpu "$work/before"
        env "${incremental[@]}" /usr/bin/time -f "%U %S %e" -o "$work/time" cargo build "${flag[@]}" -j "$jobs" > "$work/build.log" 2>&1 \
            || { cat "$work/build.log" >&2; exit 1; }
        children_cpu "$work/after"
        read -r before < "$work/before"; read -r after < "$work/after"
        read -r u s e < "$work/time"
        # Exactly the user crate was recompiled, nothing else.
        compiled=$(grep -c '^ *Compiling ' "$work/build.log" || true)
        if [[ $compiled != 1 ]] || ! grep -q '^ *Compiling build-time-user ' "$work/build.log"; then
            cat "$work/build.log" >&2
            echo "rebuild $i recompiled $compiled crates, expected only build-time-user" >&2
            exit 1
        fi
        cpu=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
        # GNU time's user+sys (its child cargo and every process cargo waited for) agrees with
        # the shell's own accounting of its children; a large gap means some work escaped.
        shell=$(awk -v b="$before" -v a="$after" 'BEGIN { printf "%.2f", a - b }')
        awk -v c="$cpu" -v d="$shell" 'BEGIN { if (d - c > 0.1 + 0.05 * c || c - d > 0.1 + 0.05 * c) exit 1 }' \
            || echo "warning: /usr/bin/time says ${cpu}s CPU, bash times ${shell}s: some work escaped one of them" >&2
        echo "[$profile] rebuild $i: cpu ${cpu}s (user $u, sys $s; bash times ${shell}s), wall ${e}s, load $(cut -d' ' -f1 /proc/loadavg)" >&2
        cpus+=("$cpu"); walls+=("$e")
    done
    cpu_med=$(printf '%s\n' "${cpus[@]}" | median)
    wall_med=$(printf '%s\n' "${walls[@]}" | median)
    results+=("$(printf '%-11s %6s %6s   (cpu: %s; wall: %s)' "$profile" "$cpu_med" "$wall_med" "${cpus[*]}" "${walls[*]}")")
done
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (after)"
echo
echo "median of $runs rebuilds after touching main.rs (seconds)"
printf '%-11s %6s %6s\n' row cpu wall
printf '%s\n' "${results[@]}"
