"""Where a forward pass's time goes on this CPU: bfloat16 matrix products alone against the whole model, and
the three attention kernels on the same passes, in one run.

Drift, task quality and extraction are all forward passes of the embedded
SmolLM2 in bfloat16. If the whole pass runs far below the matrix products'
own rate, the gap is attention and element-wise work; this says how large
each is, and whether another attention kernel would close it::

    python benchmarks/forward_kernels.py --repeats 3

Kernels alternate within each repeat (the machine's speed drifts by minutes);
the medians and ratios to PyTorch's default (``sdpa``, its CPU flash kernel) are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

SHAPES = {  # SmolLM2-135M: hidden 576, MLP 1536, 3 key-value heads of 64, vocabulary 49152
    "q/o projection": (576, 576), "k/v projection": (576, 192), "MLP up/gate": (576, 1536),
    "MLP down": (1536, 576), "lm_head": (576, 49152),
}
PASSES = {"16 rows of 256 tokens": (16, 256), "64 rows of 64 tokens": (64, 64)}


def seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    from sftscope.cli import positive  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive, default=3)
    args = parser.parse_args()

    import torch  # noqa: PLC0415
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    from sftscope.jobs import pinned_threads  # noqa: PLC0415
    from sftscope.models import load_model_and_tokenizer  # noqa: PLC0415

    with pinned_threads(2):
        tokens = 4096
        print(f"bfloat16 matrix products alone, {tokens} rows:")
        for name, (k, n) in SHAPES.items():
            x, w = torch.randn(tokens, k, dtype=torch.bfloat16), torch.randn(n, k, dtype=torch.bfloat16)
            rate = tokens * k * n / seconds(lambda: torch.nn.functional.linear(x, w)) / 1e9  # noqa: B023
            print(f"  {name:16s} {rate:6.0f} GMAC/s")

        model, _ = load_model_and_tokenizer("smollm2-135m-instruct", dtype="bfloat16")
        macs = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n) + 576 * 49152  # + tied head
        kernels = {"sdpa (flash)": ("sdpa", SDPBackend.FLASH_ATTENTION), "sdpa (math)": ("sdpa", SDPBackend.MATH),
                   "eager": ("eager", None)}
        for label, (rows, length) in PASSES.items():
            ids = torch.randint(100, 40000, (rows, length))
            timed: dict[str, list[float]] = {k: [] for k in kernels}
            for _ in range(args.repeats):
                for name, (impl, backend) in kernels.items():
                    model.set_attn_implementation(impl)

                    def forward():
                        with torch.no_grad(), sdpa_kernel([backend]) if backend else contextlib.nullcontext():
                            model(input_ids=ids, use_cache=False)

                    timed[name].append(seconds(forward, repeats=1))
            model.set_attn_implementation("sdpa")
            default = statistics.median(timed["sdpa (flash)"])
            print(f"whole forward pass, {label}:")
            for name, values in timed.items():
                median = statistics.median(values)
                print(f"  {name:14s} {median:6.2f} s  {rows * length * macs / median / 1e9:5.0f} GMAC/s  "
                      f"{median / default:.2f}x the default")


if __name__ == "__main__":
    main()
