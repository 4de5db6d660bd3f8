"""The hand-made mutations the test-quality review listed, each put into a copy of the package and run against the
test files that must catch it (all of them part of the README's test command).

A mutation counts as caught when `pytest -x` on its test files fails. The working tree is never changed: every
mutant lives in its own temporary copy of `hf_fst/` and `tests/`, imported first through PYTHONPATH.

    OMP_NUM_THREADS=1 python benchmarks/listed_mutations.py          # writes benchmarks/results/mutation/listed.tsv
    OMP_NUM_THREADS=1 python benchmarks/listed_mutations.py --only sync_buffers
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


ATTACK_TESTS = ("tests/test_attacks.py", "tests/test_attacks_poison.py", "tests/test_trigger_geometry.py")

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "asr_always_zero",
        "evaluate_backdoor reports ASR 0.0 whatever the model predicts",
        "hf_fst/metrics.py",
        '"attack_success_rate": attack_success_rate(backdoor_predictions, backdoor["labels"]),',
        '"attack_success_rate": 0.0,',
        ("tests/test_metrics.py",),
    ),
    Mutation(
        "ft_init_projects",
        "ft-init projects the head to ||W0|| by default, as FST does",
        "hf_fst/tuning/config.py",
        'return self.tuning_mode == "fst" if self.project_head_norm is None',
        'return self.tuning_mode in ("fst", "ft-init") if self.project_head_norm is None',
        ("tests/test_tuning.py",),
    ),
    Mutation(
        "log_last_value",
        "the logged ce_loss / fst_penalty is the window's last value, not its mean",
        "hf_fst/tuning/trainer.py",
        "self._part_sums[key] = self._part_sums[key] + value if key in self._part_sums else value.float()\n"
        "        self._part_counts[key] = self._part_counts.get(key, 0) + 1",
        "self._part_sums[key] = value.float()\n        self._part_counts[key] = 1",
        ("tests/test_tuning.py",),
    ),
    Mutation(
        "sync_buffers_noop",
        "sync_buffers leaves each rank's BatchNorm statistics as they are",
        "hf_fst/tuning/trainer.py",
        "dist.broadcast(buffer.data, src=0)",
        "pass",
        ("tests/test_ddp.py",),
    ),
    Mutation(
        "adaptive_blend_cover_full",
        "Adaptive-Blend cover rows get the full test trigger",
        "hf_fst/attacks/adaptive_blend.py",
        'if kind == "test":',
        'if kind in ("test", "cover"):',
        ATTACK_TESTS,
    ),
    Mutation(
        "sig_test_delta_in_training",
        "SIG's test_delta is applied to training rows too",
        "hf_fst/attacks/sig.py",
        'delta = self.test_delta if kind == "test" and self.test_delta is not None else self.delta',
        "delta = self.test_delta if self.test_delta is not None else self.delta",
        ATTACK_TESTS,
    ),
    Mutation(
        "wanet_scale_swapped",
        "WaNet's x and y warp scales are swapped (only non-square images tell)",
        "hf_fst/attacks/wanet.py",
        "scale = torch.tensor([s / width, s / height])",
        "scale = torch.tensor([s / height, s / width])",
        ATTACK_TESTS,
    ),
    Mutation(
        "head_tie_break",
        "the head lookup ignores the parent's name when two layers tie",
        "hf_fst/heads.py",
        'n.lower().split(".")[-2:]',
        'n.lower().split(".")[-1:]',
        ("tests/test_heads.py",),
    ),
    Mutation(
        "fsdp_not_refused",
        "FSDP is let through with the FST penalty and projection",
        "hf_fst/tuning/trainer.py",
        "if args.requests_fsdp and args.reads_whole_head:",
        "if False:",
        ("tests/test_trainer_contract.py",),
    ),
    Mutation(
        "model_init_not_refused",
        "model_init= is accepted",
        "hf_fst/tuning/trainer.py",
        "if model_init is not None:",
        "if False:",
        ("tests/test_trainer_contract.py",),
    ),
    Mutation(
        "w0_shape_not_checked",
        "resuming with W0 of another shape is not refused",
        "hf_fst/tuning/trainer.py",
        'if state["w0"].shape != self.fst_w0.shape:',
        "if False:",
        ("tests/test_trainer_contract.py",),
    ),
    Mutation(
        "demo_fst_too_strong",
        "the demo's FST run 100 times stronger (clean accuracy collapses)",
        "hf_fst/demo.py",
        '{"tuning_mode": "fst", "fst_alpha": fst_alpha}',
        '{"tuning_mode": "fst", "fst_alpha": 100 * fst_alpha}',
        ("tests/test_demo.py",),
    ),
    Mutation(
        "demo_fst_off",
        "the demo's FST run without the penalty (alpha 0: the backdoor stays)",
        "hf_fst/demo.py",
        '{"tuning_mode": "fst", "fst_alpha": fst_alpha}',
        '{"tuning_mode": "fst", "fst_alpha": 0.0}',
        ("tests/test_demo.py",),
    ),
)


def run_tests(tests: tuple[str, ...], mutation: Mutation | None = None) -> tuple[bool, float]:
    """(passed, seconds): `pytest -x` on `tests` in a temporary copy of the package, with `mutation` put in."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as folder:
        copy = Path(folder)
        for part in ("hf_fst", "tests"):
            shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):  # pytest's settings; the contract test reads the README
            shutil.copy(ROOT / name, copy / name)
        if mutation is not None:
            source = (ROOT / mutation.path).read_text()
            if source.count(mutation.old) != 1:
                raise SystemExit(f"{mutation.name}: the original text occurs {source.count(mutation.old)} times in "
                                 f"{mutation.path}; update MUTATIONS to the current source")  # fmt: skip
            (copy / mutation.path).write_text(source.replace(mutation.old, mutation.new))
        env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
        return done.returncode == 0, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names of the mutations to run (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mutation/listed.tsv"))
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(args.only):
        raise SystemExit(f"--only: unknown names; choose from {', '.join(m.name for m in MUTATIONS)}")
    files = tuple(sorted({test for m in chosen for test in m.tests}))
    passed, seconds = run_tests(files)  # the copy without a mutant must pass, or "caught" would mean nothing
    if not passed:
        raise SystemExit(f"the unmutated copy fails {' '.join(files)}; fix that first")
    print(f"unmutated copy: {len(files)} test files pass ({seconds:.0f} s)", flush=True)
    rows, missed = ["mutation\twhat\tfile\ttests\tcaught\tseconds"], []
    for mutation in chosen:
        passed, seconds = run_tests(mutation.tests, mutation)
        caught = not passed
        if not caught:
            missed.append(mutation.name)
        print(f"{mutation.name}: {'caught' if caught else 'NOT CAUGHT'} ({seconds:.0f} s)", flush=True)
        rows.append(
            f"{mutation.name}\t{mutation.what}\t{mutation.path}\t{' '.join(mutation.tests)}\t{caught}\t{seconds:.0f}"
        )
    if not args.only:
        Path(args.out).write_text("\n".join(rows) + "\n")
    if missed:
        raise SystemExit(f"not caught: {', '.join(missed)}")


if __name__ == "__main__":
    main()
