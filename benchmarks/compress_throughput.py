"""Quantize+pack and unpack+dequantize throughput on one CPU thread, next to torch's copy bandwidth.

    python benchmarks/compress_throughput.py            # the committed result (10M elements, s = 1, 2, 4, 8)
    python benchmarks/compress_throughput.py --quick    # about a minute (to runs/bench_quick/)
    python benchmarks/compress_throughput.py --out DIR  # where compress_throughput.json and .png go

Throughput is GB/s of fp32 input (4 bytes per element; 10M elements = 40 MB per pass), the median of
several passes. quant_pack includes the min/max pass that sets the grid, i.e. everything encode_message
does but the 40-byte header. ``quant_pack_gbps`` / ``unpack_dequant_gbps`` are the path encode_message
and decode_message pick automatically on CPU; ``reference_*`` the plain-torch path, the starting point.
``copy_gbps`` counts bytes read plus written by ``dst.copy_(src)`` (80 MB per pass), ``copy_input_gbps``
only the 40 MB read, comparable with the other figures. ``cpu_time_*`` repeat the fast path's figures per
second of the thread's CPU time: on a shared machine they show what the code does when it gets the core.
``blocks_*`` time the same fast path with block-wise grids (``compression.block_size`` = 256: one offset and
scale per 256 elements, their min/max pass included), and ``blocks_vs_one_grid`` divides their throughput by
one grid's: the speed class of the block-wise kernels.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402

import torch  # noqa: E402

from qtd.compress import noise_key, packed_nbytes, quantize_pack, select_backend, unpack_dequantize  # noqa: E402
from qtd.compress.fused import quantize_pack_blocks, unpack_dequantize_blocks  # noqa: E402

from _common import OUT_HELP, results_dir  # noqa: E402

BITS = (1, 2, 4, 8)
BLOCK_SIZE = 256
NAME = "compress_throughput"


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], list[float]]:
    """Median wall-clock seconds of ``repeats`` passes after one warm-up, plus every pass's wall-clock and
    thread CPU seconds (the latter barely moves when other processes compete for the cores)."""
    fn()  # warm-up: compilation, page faults
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return statistics.median(wall), wall, cpu


def _coders(x: torch.Tensor, bits: int, key: int, packed: torch.Tensor, values: torch.Tensor, backend: str,
            block_size: int) -> tuple[Callable[[], object], Callable[[], Callable[[], object]]]:
    """(encode, make_decode): one grid per message (block_size 0) or one per block of ``block_size``."""
    if not block_size:
        encode = partial(quantize_pack, x, bits, key, out=packed, backend=backend)

        def make_decode() -> Callable[[], object]:
            grid = encode()[1]
            return partial(unpack_dequantize, packed, bits, x.numel(), grid.offset, grid.scale, out=values,
                           backend=backend)
        return encode, make_decode
    encode = partial(quantize_pack_blocks, x, bits, key, block_size, out=packed, backend=backend)

    def make_block_decode() -> Callable[[], object]:
        grids = encode()[1]
        return partial(unpack_dequantize_blocks, packed, bits, x.numel(), grids.offsets, grids.scales, block_size,
                       out=values, backend=backend)
    return encode, make_block_decode


def measure_path(x: torch.Tensor, backend: str, repeats: int, block_size: int = 0) -> dict[str, dict]:
    quant, unpack, quant_cpu, unpack_cpu, raw = {}, {}, {}, {}, {}
    input_gb = x.numel() * 4 / 1e9
    for bits in BITS:
        key = noise_key(0, 0, bits)
        packed = torch.empty(packed_nbytes(x.numel(), bits), dtype=torch.uint8)
        values = torch.empty_like(x)
        encode, make_decode = _coders(x, bits, key, packed, values, backend, block_size)
        t_q, wall_q, cpu_q = median_seconds(encode, repeats)
        decode = make_decode()
        t_u, wall_u, cpu_u = median_seconds(decode, repeats)
        quant[str(bits)] = round(input_gb / t_q, 4)
        unpack[str(bits)] = round(input_gb / t_u, 4)
        quant_cpu[str(bits)] = round(input_gb / statistics.median(cpu_q), 4)
        unpack_cpu[str(bits)] = round(input_gb / statistics.median(cpu_u), 4)
        raw[str(bits)] = {"quant_pack_s": wall_q, "unpack_dequant_s": wall_u,
                          "quant_pack_cpu_s": cpu_q, "unpack_dequant_cpu_s": cpu_u}
        label = f"{backend} B={block_size}" if block_size else backend
        print(f"  {label:9s} s={bits}: quantize+pack {quant[str(bits)]:7.3f} GB/s   "
              f"unpack+dequantize {unpack[str(bits)]:7.3f} GB/s   "
              f"(per CPU-second: {quant_cpu[str(bits)]:.3f} / {unpack_cpu[str(bits)]:.3f})", flush=True)
    return {"quant_pack_gbps": quant, "unpack_dequant_gbps": unpack, "cpu_time_quant_pack_gbps": quant_cpu,
            "cpu_time_unpack_dequant_gbps": unpack_cpu, "seconds": raw}


def check_paths_agree(x: torch.Tensor, fast: str, block_size: int = 0) -> None:
    """The fast path must produce the reference path's exact bytes and values on the benchmark's own data."""
    sample = x[: 1_000_003]
    for bits in BITS:
        key = noise_key(0, 0, bits)
        if block_size:
            ref, ref_grids = quantize_pack_blocks(sample, bits, key, block_size, backend="reference")
            got, grids = quantize_pack_blocks(sample, bits, key, block_size, backend=fast)
            same_grid = torch.equal(ref_grids.offsets, grids.offsets) and torch.equal(ref_grids.scales, grids.scales)
        else:
            ref, ref_grid = quantize_pack(sample, bits, key, backend="reference")
            got, grid = quantize_pack(sample, bits, key, backend=fast)
            same_grid = grid == ref_grid
        if not same_grid or not torch.equal(ref, got):
            raise SystemExit(f"{fast} path disagrees with the reference at s={bits}: not timing a wrong kernel")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    series = [
        (f"quantize+pack ({summary['fast_path']})", summary["quant_pack_gbps"]),
        (f"unpack+dequantize ({summary['fast_path']})", summary["unpack_dequant_gbps"]),
        ("quantize+pack (reference)", summary["reference_quant_pack_gbps"]),
        ("unpack+dequantize (reference)", summary["reference_unpack_dequant_gbps"]),
    ]
    if "blocks_quant_pack_gbps" in summary:
        series += [(f"quantize+pack, B = {summary['block_size']} ({summary['fast_path']})",
                    summary["blocks_quant_pack_gbps"]),
                   (f"unpack+dequantize, B = {summary['block_size']} ({summary['fast_path']})",
                    summary["blocks_unpack_dequant_gbps"])]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        ax.bar([b + (i - (len(series) - 1) / 2) * width for b in range(len(BITS))], [values[str(b)] for b in BITS],
               width, label=label)
    ax.axhline(summary["copy_input_gbps"], color="k", linestyle="--", label="torch copy (input bytes)")
    for target, what in ((1.0, "quantize+pack"), (2.0, "unpack+dequantize")):
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"issue 8 target, {what}", (len(BITS) - 0.5, target), fontsize=7, color="grey",
                    ha="right", va="bottom")
    ax.set_xticks(range(len(BITS)), [f"s = {b}" for b in BITS])
    ax.set_yscale("log")
    ax.set_ylabel("GB/s of fp32 input (one thread)")
    load = result["settings"].get("load_average_1min", {}).get("start")
    load_note = f", load avg {load:.1f} on {result['settings']['cpu_count']} cores" if load is not None else ""
    ax.set_title(f"qtd compression, {result['settings']['elements']:,} fp32 elements, 1 CPU thread{load_note}",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer passes (about a minute)")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    parser.add_argument("--elements", type=int, default=10_000_000)
    args = parser.parse_args(argv)
    out = results_dir(args.out, args.quick, NAME)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    x = torch.randn(args.elements)
    fast_repeats, ref_repeats = (5, 1) if args.quick else (21, 5)
    fast = select_backend(x.device)

    # copy is sampled before and after the fast path, so it reflects the same machine load (shared boxes)
    copy_dst = torch.empty_like(x)
    copy_times = median_seconds(lambda: copy_dst.copy_(x), 2 * fast_repeats)[1]
    input_gb = x.numel() * 4 / 1e9
    print(f"torch copy: {2 * input_gb / statistics.median(copy_times):.2f} GB/s read+write", flush=True)

    paths = {}
    if fast != "reference":
        check_paths_agree(x, fast)
        paths[fast] = measure_path(x, fast, fast_repeats)
        check_paths_agree(x, fast, BLOCK_SIZE)
        paths[f"{fast}_blocks"] = measure_path(x, fast, fast_repeats, BLOCK_SIZE)
    copy_times += median_seconds(lambda: copy_dst.copy_(x), 2 * fast_repeats)[1]
    t_copy = statistics.median(copy_times)
    paths["reference"] = measure_path(x, "reference", ref_repeats)

    summary = {
        "quant_pack_gbps": paths[fast]["quant_pack_gbps"],
        "unpack_dequant_gbps": paths[fast]["unpack_dequant_gbps"],
        "copy_gbps": round(2 * input_gb / t_copy, 4),
        "copy_input_gbps": round(input_gb / t_copy, 4),
        "reference_quant_pack_gbps": paths["reference"]["quant_pack_gbps"],
        "reference_unpack_dequant_gbps": paths["reference"]["unpack_dequant_gbps"],
        "cpu_time_quant_pack_gbps": paths[fast]["cpu_time_quant_pack_gbps"],
        "cpu_time_unpack_dequant_gbps": paths[fast]["cpu_time_unpack_dequant_gbps"],
        "fast_path": fast,
    }
    if f"{fast}_blocks" in paths:
        blocks = paths[f"{fast}_blocks"]
        summary.update({
            "block_size": BLOCK_SIZE,
            "blocks_quant_pack_gbps": blocks["quant_pack_gbps"],
            "blocks_unpack_dequant_gbps": blocks["unpack_dequant_gbps"],
            "blocks_vs_one_grid": {
                what: {b: round(blocks[key][b] / paths[fast][key][b], 3) for b in blocks[key]}
                for what, key in (("quant_pack", "quant_pack_gbps"), ("unpack_dequant", "unpack_dequant_gbps"))},
        })
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    settings = {
        "elements": args.elements,
        "bits": list(BITS),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": {"fast": fast_repeats, "reference": ref_repeats, "copy": 4 * fast_repeats},
        "statistic": "median of repeats after one warm-up pass",
        "units": "GB/s = 1e9 bytes of fp32 input per second (copy_gbps: bytes read + written)",
        "cpu_time": "cpu_time_* divide by the thread's CPU seconds instead of wall-clock seconds: a check on "
                    "results taken while other processes compete for the cores",
        "input": "torch.randn, seed 0",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba_version,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
    }
    result = {"summary": summary, "settings": settings,
              "seconds": {"copy": copy_times, **{name: p["seconds"] for name, p in paths.items()}}}
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"{NAME}.png")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / (NAME + '.json')} and {out / (NAME + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
