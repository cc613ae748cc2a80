"""Two steps of benchmarks/gpu_check.py: the Triton kernels' bytes against the CPU reference, and their speed
against torch's device-to-device copy. Run in a subprocess, so that a hung kernel is a timeout, not a hang:

    python benchmarks/_gpu_check_kernels.py exact      --result FILE [--sizes 0,1,9,...] [--interpret]
    python benchmarks/_gpu_check_kernels.py throughput --result FILE --elements N [--repeats R] [--interpret]

On a GPU the kernels run compiled on CUDA tensors. ``--interpret`` (the dry run on a CPU machine) runs the same
kernels in Triton's interpreter on CPU tensors instead, as tests/triton_interpreter_check.py does: that checks
the logic and this script, and its timings mean nothing. The result file holds {status, message, details}.
"""

from __future__ import annotations

import os
import sys

if "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton defines the kernels

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _common import write_step_result  # noqa: E402
from qtd.compress import (decode_message, encode_message, noise_key, packed_nbytes, quantize,  # noqa: E402
                          quantize_pack, select_backend, unpack_dequantize)
from qtd.compress.grid import quantization_grid  # noqa: E402

BITS = tuple(range(1, 9))
PROGRAM_ELEMENTS = 2048  # elements per Triton program (GROUPS * 8): sizes around multiples of it matter
GPU_SIZES = (0, 1, 7, 8, 9, 2047, 2048, 2049, 2 * 2048 + 13, 65_537, 1_000_003, 2**22 + 5)
INTERPRETER_SIZES = (0, 1, 9, 2049, 2 * 2048 + 13)


def kernels():
    from qtd.compress import _triton_kernels

    if not _triton_kernels.AVAILABLE:
        raise RuntimeError("triton cannot be imported here: the Triton kernels cannot run")
    return _triton_kernels


@contextmanager
def reference_backend():
    """Every qtd.compress call inside runs the plain-torch reference path (QTD_COMPRESS_BACKEND)."""
    before = os.environ.get("QTD_COMPRESS_BACKEND")
    os.environ["QTD_COMPRESS_BACKEND"] = "reference"
    try:
        yield
    finally:
        if before is None:
            del os.environ["QTD_COMPRESS_BACKEND"]
        else:
            os.environ["QTD_COMPRESS_BACKEND"] = before


def sample(count: int, seed: int) -> torch.Tensor:
    """Heavy-tailed data with one far outlier: codes of every value occur (the grid spans min..max)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, generator=g) * torch.rand(count, generator=g) ** 3 * 50
    if count > 3:
        x[count // 2] = 1e4
    return x


def stream_key(bits: int, count: int) -> int:
    return noise_key(5, bits, count) | (1 << 63) | (1 << 31)  # both key halves >= 2**31: unsigned handling


def check_case(x: torch.Tensor, bits: int, device: torch.device, compiled: bool) -> list[str]:
    """Every Triton entry point on ``device`` against the CPU reference for one input; the mismatches.

    Outputs are poisoned first, so an element the kernel never writes shows up. ``compiled`` adds the public
    API on CUDA (the path encode_message picks) and the reference path on CUDA (the fallback)."""
    k = kernels()
    count = x.numel()
    key = stream_key(bits, count)
    what = f"count={count} bits={bits}"
    bad = []
    ref_packed, grid = quantize_pack(x, bits, key, backend="reference")
    ref_values = unpack_dequantize(ref_packed, bits, count, grid.offset, grid.scale, backend="reference")
    ref_codes = quantize(x, bits, key, backend="reference").codes
    xd, packed_d = x.to(device), ref_packed.to(device)

    packed = torch.full((ref_packed.numel(),), 0xEE, dtype=torch.uint8, device=device)
    k.quantize_pack_triton(xd, grid, bits, key, packed)
    if not torch.equal(packed.cpu(), ref_packed):
        bad.append(f"quantize+pack kernel {what}")
    values = torch.full((count,), float("nan"), device=device)
    k.unpack_dequantize_triton(packed_d, bits, count, grid.offset, grid.scale, values)
    if not torch.equal(values.cpu(), ref_values):
        bad.append(f"unpack+dequantize kernel {what}")
    codes = torch.full((count,), 0xEE, dtype=torch.uint8, device=device)
    k.quantize_codes_triton(xd, grid, bits, key, codes)
    if not torch.equal(codes.cpu(), ref_codes):
        bad.append(f"quantize (codes) kernel {what}")
    if compiled:
        api_packed, api_grid = quantize_pack(xd, bits, key, backend="triton")
        if api_grid != grid or not torch.equal(api_packed.cpu(), ref_packed):
            bad.append(f"quantize_pack(backend='triton') {what} (grid {api_grid} vs {grid})")
        message = encode_message(xd, bits, sender=3, iteration=count, seed=11)  # auto: the path a run takes
        with reference_backend():
            ref_message = encode_message(x, bits, sender=3, iteration=count, seed=11)
        if not torch.equal(message.cpu(), ref_message):
            bad.append(f"encode_message on CUDA {what}")
        elif not torch.equal(decode_message(message)[1].cpu(), decode_message(ref_message)[1]):
            bad.append(f"decode_message on CUDA {what}")
        if count <= 4 * PROGRAM_ELEMENTS:
            slow_packed, slow_grid = quantize_pack(xd, bits, key, backend="reference")
            if slow_grid != grid or not torch.equal(slow_packed.cpu(), ref_packed):
                bad.append(f"reference path on CUDA {what}")
    return bad


def exact(device: torch.device, sizes: tuple[int, ...], compiled: bool) -> tuple[str, str, dict]:
    started = time.perf_counter()
    failures, cases = [], 0
    if compiled and select_backend(device) != "triton":
        failures.append(f"encode_message would take the {select_backend(device)} path on {device}, not triton")
    for count in sizes:
        for bits in BITS:
            failures += check_case(sample(count, seed=count * 16 + bits), bits, device, compiled)
            cases += 1
    for bits in BITS:  # a constant message: scale 0, every code 0, values come back exactly
        failures += check_case(torch.full((2 * PROGRAM_ELEMENTS + 3,), -2.5), bits, device, compiled)
        cases += 1
    seconds = time.perf_counter() - started
    details = {"device": str(device), "compiled": compiled, "bits": list(BITS), "sizes": list(sizes),
               "cases": cases, "mismatches": failures[:20], "mismatch_count": len(failures),
               "seconds": round(seconds, 2),
               "checked": ("quantize+pack, unpack+dequantize and quantize-codes kernels on poisoned outputs"
                           + (", quantize_pack(backend='triton'), encode/decode_message (auto path) and the "
                              "reference path on CUDA" if compiled else "")
                           + " against the plain-torch reference on CPU tensors")}
    if failures:
        return "failed", f"{len(failures)} mismatches, first: {failures[0]}", details
    where = "compiled on " + torch.cuda.get_device_name(device) if compiled else "in Triton's interpreter on CPU"
    return "passed", (f"{cases} cases bit-identical to the CPU reference ({where}; s = 1..8, "
                      f"{len(sizes)} sizes up to {max(sizes):,})"), details


# --------------------------------------------------------------------------------------------- throughput

def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int, batch: int) -> list[float]:
    """Seconds per call, ``repeats`` times, each the mean of ``batch`` back-to-back calls after a warm-up.

    On CUDA the calls are enqueued between two events, so the GPU stays busy and the figure is the kernels'
    time, not Python's launch time; on CPU (interpreter) it is wall-clock time."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(batch):
                fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3 / batch)
        else:
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            out.append((time.perf_counter() - t0) / batch)
    return out


def wall_seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Wall-clock seconds of one whole call, synchronized: what a caller waits (host round trips included)."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def gbps(nbytes: int, seconds: list[float]) -> float:
    return significant(nbytes / statistics.median(seconds) / 1e9)


def throughput(device: torch.device, elements: int, repeats: int, batch: int, compiled: bool,
               bits_list: tuple[int, ...]) -> tuple[str, str, dict]:
    k = kernels()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(elements, device=device, generator=g)
    copy_dst = torch.empty_like(x)
    fp32 = elements * 4
    copy_s = seconds_per_call(lambda: copy_dst.copy_(x), device, repeats, batch)
    figures: dict[str, dict[str, float]] = {name: {} for name in (
        "quant_pack_gbps", "quant_pack_traffic_gbps", "quant_pack_call_gbps", "unpack_dequant_gbps",
        "unpack_dequant_traffic_gbps")}
    raw: dict[str, dict[str, list[float]]] = {}
    verified = {}
    for bits in bits_list:
        key = noise_key(0, 0, bits)
        grid = quantization_grid(x, bits)
        nbytes = packed_nbytes(elements, bits)
        packed = torch.empty(nbytes, dtype=torch.uint8, device=device)
        values = torch.empty_like(x)
        kernel_s = seconds_per_call(lambda: k.quantize_pack_triton(x, grid, bits, key, packed), device, repeats,
                                    batch)
        if compiled:
            def call():
                return quantize_pack(x, bits, key, out=packed, backend="triton")
        else:  # the interpreter runs on CPU tensors, which the public API sends to the CPU paths
            def call():
                return k.quantize_pack_triton(x, quantization_grid(x, bits), bits, key, packed)
        call_s = wall_seconds_per_call(call, device, repeats)
        unpack_s = seconds_per_call(
            lambda: k.unpack_dequantize_triton(packed, bits, elements, grid.offset, grid.scale, values), device,
            repeats, batch)
        b = str(bits)
        figures["quant_pack_gbps"][b] = gbps(fp32, kernel_s)
        figures["quant_pack_traffic_gbps"][b] = gbps(fp32 + nbytes, kernel_s)
        figures["quant_pack_call_gbps"][b] = gbps(fp32, call_s)
        figures["unpack_dequant_gbps"][b] = gbps(fp32, unpack_s)
        figures["unpack_dequant_traffic_gbps"][b] = gbps(fp32 + nbytes, unpack_s)
        raw[b] = {"quant_pack_kernel_s": kernel_s, "quant_pack_call_s": call_s, "unpack_dequant_s": unpack_s}
        print(f"  s={bits}: quantize+pack {figures['quant_pack_gbps'][b]:.4g} GB/s of fp32 input "
              f"({figures['quant_pack_call_gbps'][b]:.4g} as a whole call), unpack+dequantize "
              f"{figures['unpack_dequant_gbps'][b]:.4g} GB/s", flush=True)
        if bits == 4:  # the timed output itself, all of it, against the CPU reference
            ref_packed, ref_grid = quantize_pack(x.cpu(), bits, key, backend="reference")
            ref_values = unpack_dequantize(ref_packed, bits, elements, grid.offset, grid.scale, backend="reference")
            verified = {"bits": bits, "elements": elements, "grid_equal": ref_grid == grid,
                        "packed_equal": torch.equal(packed.cpu(), ref_packed),
                        "values_equal": torch.equal(values.cpu(), ref_values)}
    copy_s += seconds_per_call(lambda: copy_dst.copy_(x), device, repeats, batch)  # before and after: same state
    copy_gbps = gbps(2 * fp32, copy_s)
    fractions = {b: significant(v / copy_gbps) for b, v in figures["quant_pack_traffic_gbps"].items()}
    unpack_fractions = {b: significant(v / copy_gbps) for b, v in figures["unpack_dequant_traffic_gbps"].items()}
    details = {"device": str(device), "compiled": compiled, "elements": elements, "repeats": repeats,
               "batch": batch, "copy_gbps": copy_gbps, "copy_input_gbps": significant(copy_gbps / 2), **figures,
               "quant_pack_fraction_of_copy": fractions, "unpack_dequant_fraction_of_copy": unpack_fractions,
               "verified_output": verified, "seconds": {"copy": copy_s, **raw}}
    if not verified or not all(verified[name] for name in ("grid_equal", "packed_equal", "values_equal")):
        return "failed", f"the timed 4-bit output differs from the CPU reference: {verified}", details
    head = (f"s=4: quantize+pack at {100 * fractions.get('4', float('nan')):.3g}% of the copy bandwidth "
            f"({copy_gbps:,.1f} GB/s)")
    if not compiled:
        head += "; interpreter timings, meaningless"
    return "passed", head + f"; timed 4-bit output bit-identical to the reference ({elements:,} elements)", details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("exact", "throughput"))
    parser.add_argument("--result", required=True, help="where to write this step's result (JSON)")
    parser.add_argument("--interpret", action="store_true", help="Triton's interpreter on CPU tensors (dry run)")
    parser.add_argument("--sizes", default=None, help="exact: comma-separated element counts")
    parser.add_argument("--elements", type=int, default=100_000_000, help="throughput: elements per pass")
    parser.add_argument("--repeats", type=int, default=7, help="throughput: timed repeats (median)")
    parser.add_argument("--batch", type=int, default=10, help="throughput: back-to-back calls per repeat")
    parser.add_argument("--bits", default="1,2,4,8", help="throughput: bit widths (4 is always included)")
    args = parser.parse_args(argv)
    compiled = not args.interpret
    from qtd.compress import _triton_kernels

    if not _triton_kernels.AVAILABLE:
        status = "skipped" if args.interpret else "failed"  # a CPU machine may lack triton; a GPU run may not
        write_step_result(args.result, status, "triton is not importable here, so its kernels cannot run "
                          "(pip install triton)", {})
        print(f"{args.what}: {status}: triton is not importable", flush=True)
        return 0 if status == "skipped" else 1
    if compiled and not torch.cuda.is_available():
        write_step_result(args.result, "failed", "no CUDA device: the compiled kernels need one (--interpret "
                          "runs them in Triton's interpreter on CPU)", {})
        return 1
    device = torch.device("cuda", torch.cuda.current_device()) if compiled else torch.device("cpu")
    if args.what == "exact":
        sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (
            GPU_SIZES if compiled else INTERPRETER_SIZES)
        status, message, details = exact(device, sizes, compiled)
    else:
        bits_list = tuple(sorted({int(b) for b in args.bits.split(",")} | {4}))
        status, message, details = throughput(device, args.elements, args.repeats, args.batch, compiled, bits_list)
    write_step_result(args.result, status, message, details)
    print(f"{args.what}: {status}: {message}", flush=True)
    return 0 if status == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
