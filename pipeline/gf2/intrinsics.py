"""Carry-less multiply (PCLMULQDQ) reached from numba through an LLVM intrinsic.

``clmul(a, b)`` returns the 128-bit carry-less product of two uint64 words as ``(lo, hi)``. The
LLVM intrinsic ``llvm.x86.pclmulqdq`` lowers to one PCLMULQDQ instruction; it only compiles on an
x86-64 CPU that has the instruction, so callers check :func:`has_pclmul` before the first call
(numba compiles lazily, so importing this module is safe everywhere).
"""

from __future__ import annotations

import platform
from functools import cache

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _target_features() -> dict[str, bool]:
    """CPU features numba compiles for: the host's, or NUMBA_CPU_FEATURES when a CPU is forced."""
    from numba.core import config

    if config.CPU_NAME and config.CPU_NAME != "host":
        flags = (config.CPU_FEATURES or "").split(",")
        return {f[1:]: f.startswith("+") for f in flags if f[:1] in "+-" and len(f) > 1}
    from llvmlite import binding

    return dict(binding.get_host_cpu_features())


@cache
def has_pclmul() -> bool:
    """True when the CPU numba compiles for has PCLMULQDQ (x86-64 only)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return bool(_target_features().get("pclmul", False))
    except Exception:  # pragma: no cover - llvmlite cannot read features on some hosts
        try:
            with open("/proc/cpuinfo") as f:
                return " pclmulqdq" in f.read()
        except OSError:
            return False


@intrinsic
def clmul(typingctx, a, b):
    """Carry-less 64x64 -> 128-bit product of two uint64 words, returned as (lo, hi)."""
    if a != types.uint64 or b != types.uint64:
        return None
    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        v2 = ir.VectorType(i64, 2)
        fnty = ir.FunctionType(v2, [v2, v2, ir.IntType(8)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.pclmulqdq")
        zero = ir.Constant(v2, None)
        va = builder.insert_element(zero, args[0], ir.Constant(ir.IntType(32), 0))
        vb = builder.insert_element(zero, args[1], ir.Constant(ir.IntType(32), 0))
        prod = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0)])
        lo = builder.extract_element(prod, ir.Constant(ir.IntType(32), 0))
        hi = builder.extract_element(prod, ir.Constant(ir.IntType(32), 1))
        return context.make_tuple(builder, signature.return_type, [lo, hi])

    return sig, codegen


@cache
def has_vpclmul() -> bool:
    """True when the host also has the 512-bit VPCLMULQDQ (four products per instruction)."""
    if not has_pclmul():
        return False
    try:
        features = _target_features()
        return bool(features.get("vpclmulqdq", False) and features.get("avx512f", False))
    except Exception:  # pragma: no cover
        return False


def _pclmul_fn(builder, lanes):
    vec = ir.VectorType(ir.IntType(64), lanes)
    name = "llvm.x86.pclmulqdq" if lanes == 2 else "llvm.x86.pclmulqdq.512"
    fnty = ir.FunctionType(vec, [vec, vec, ir.IntType(8)])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


def _vector_loop(context, builder, acc_ptr, pu, pb, start, n_iter, lanes):
    """acc ^= sum over n_iter chunks of `lanes` words from pu/pb (even x even, odd x odd words)."""
    vec = ir.VectorType(ir.IntType(64), lanes)
    fn = _pclmul_fn(builder, lanes)
    step = ir.Constant(start.type, lanes)
    with cgutils.for_range(builder, n_iter) as loop:
        idx = builder.add(start, builder.mul(loop.index, step))
        va = builder.load(builder.bitcast(builder.gep(pu, [idx]), vec.as_pointer()), align=8)
        vb = builder.load(builder.bitcast(builder.gep(pb, [idx]), vec.as_pointer()), align=8)
        # imm 0x00 multiplies the low words of each 128-bit lane, 0x11 the high words.
        p0 = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0x00)])
        p1 = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0x11)])
        builder.store(builder.xor(builder.load(acc_ptr), builder.xor(p0, p1)), acc_ptr)


@intrinsic
def clmul_dot(typingctx, u, uo, b, bo, count, wide):
    """XOR over j < count of clmul(u[uo + j], b[bo + j]) as (lo, hi): a GF(2)[x] dot product.

    ``wide`` selects the 512-bit VPCLMULQDQ loop when the host has it (ignored otherwise), so both
    paths can be tested on one machine. Arrays must be C-contiguous uint64; no bounds checks.
    """
    for arr in (u, b):
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint64 and arr.layout == "C"):
            return None
    if not all(isinstance(t, types.Integer) for t in (uo, bo, count)):
        return None
    if not isinstance(wide, types.Boolean):
        return None
    sig = types.UniTuple(types.uint64, 2)(u, types.intp, b, types.intp, types.intp, types.boolean)
    use_512 = has_vpclmul()

    def codegen(context, builder, signature, args):
        u_arr = context.make_array(signature.args[0])(context, builder, args[0])
        b_arr = context.make_array(signature.args[2])(context, builder, args[2])
        pu = builder.gep(u_arr.data, [args[1]])
        pb = builder.gep(b_arr.data, [args[3]])
        count_v = args[4]
        intp_t = count_v.type
        i64 = ir.IntType(64)
        v2 = ir.VectorType(i64, 2)
        acc2 = cgutils.alloca_once_value(builder, ir.Constant(v2, None))
        start = ir.Constant(intp_t, 0)
        if use_512:
            v8 = ir.VectorType(i64, 8)
            acc8 = cgutils.alloca_once_value(builder, ir.Constant(v8, None))
            n8 = builder.select(args[5], builder.udiv(count_v, ir.Constant(intp_t, 8)), start)
            _vector_loop(context, builder, acc8, pu, pb, start, n8, 8)
            a8 = builder.load(acc8)
            for lane in range(4):
                part = builder.shuffle_vector(
                    a8, a8, ir.Constant(ir.VectorType(ir.IntType(32), 2), [2 * lane, 2 * lane + 1])
                )
                builder.store(builder.xor(builder.load(acc2), part), acc2)
            start = builder.mul(n8, ir.Constant(intp_t, 8))
        rem = builder.sub(count_v, start)
        n2 = builder.udiv(rem, ir.Constant(intp_t, 2))
        _vector_loop(context, builder, acc2, pu, pb, start, n2, 2)
        last = builder.add(start, builder.mul(n2, ir.Constant(intp_t, 2)))
        has_tail = builder.icmp_unsigned("<", last, count_v)
        with builder.if_then(has_tail):
            zero = ir.Constant(v2, None)
            k0 = ir.Constant(ir.IntType(32), 0)
            va = builder.insert_element(zero, builder.load(builder.gep(pu, [last])), k0)
            vb = builder.insert_element(zero, builder.load(builder.gep(pb, [last])), k0)
            p = builder.call(_pclmul_fn(builder, 2), [va, vb, ir.Constant(ir.IntType(8), 0)])
            builder.store(builder.xor(builder.load(acc2), p), acc2)
        acc = builder.load(acc2)
        lo = builder.extract_element(acc, ir.Constant(ir.IntType(32), 0))
        hi = builder.extract_element(acc, ir.Constant(ir.IntType(32), 1))
        return context.make_tuple(builder, signature.return_type, [lo, hi])

    return sig, codegen


def _rows_codegen(lanes):
    """IR for out[oo : oo + 2 * lanes] = rows r .. r + lanes - 1 of sum_j u[uo + r + j] * b[bo + j].

    One unaligned load of ``lanes`` consecutive u words feeds ``lanes`` rows at once: with b[j]
    broadcast, imm 0x00 multiplies the even words of each 128-bit lane (even rows) and imm 0x01 the
    odd words (odd rows), so accumulators never need a horizontal reduction.
    """

    def codegen(context, builder, signature, args):
        u_arr = context.make_array(signature.args[0])(context, builder, args[0])
        b_arr = context.make_array(signature.args[2])(context, builder, args[2])
        o_arr = context.make_array(signature.args[5])(context, builder, args[5])
        pu = builder.gep(u_arr.data, [args[1]])
        pb = builder.gep(b_arr.data, [args[3]])
        po = builder.gep(o_arr.data, [args[6]])
        i64, i32 = ir.IntType(64), ir.IntType(32)
        vec = ir.VectorType(i64, lanes)
        fn = _pclmul_fn(builder, lanes)
        acc_even = cgutils.alloca_once_value(builder, ir.Constant(vec, None))
        acc_odd = cgutils.alloca_once_value(builder, ir.Constant(vec, None))
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        with cgutils.for_range(builder, args[4]) as loop:
            vu = builder.load(
                builder.bitcast(builder.gep(pu, [loop.index]), vec.as_pointer()), align=8
            )
            bj = builder.load(builder.gep(pb, [loop.index]))
            vb = builder.insert_element(ir.Constant(vec, None), bj, ir.Constant(i32, 0))
            vb = builder.shuffle_vector(vb, vb, splat)
            p_even = builder.call(fn, [vu, vb, ir.Constant(ir.IntType(8), 0x00)])
            p_odd = builder.call(fn, [vu, vb, ir.Constant(ir.IntType(8), 0x01)])
            builder.store(builder.xor(builder.load(acc_even), p_even), acc_even)
            builder.store(builder.xor(builder.load(acc_odd), p_odd), acc_odd)
        even, odd = builder.load(acc_even), builder.load(acc_odd)
        # Interleave 128-bit lanes: row 2l is even lane l, row 2l + 1 is odd lane l; with one
        # lane (128-bit) that is simply even then odd.
        if lanes == 2:
            parts = [even, odd]
        else:
            parts = []
            for half in range(lanes // 4):
                idx = []
                for lane in (2 * half, 2 * half + 1):
                    idx += [2 * lane, 2 * lane + 1, lanes + 2 * lane, lanes + 2 * lane + 1]
                mask = ir.Constant(ir.VectorType(i32, lanes), idx)
                parts.append(builder.shuffle_vector(even, odd, mask))
        for k, part in enumerate(parts):
            dst = builder.gep(po, [ir.Constant(i64, k * lanes)])
            builder.store(part, builder.bitcast(dst, vec.as_pointer()), align=8)
        return context.get_dummy_value()

    return codegen


def _rows_typer(u, uo, b, bo, count, out, oo):
    for arr in (u, b, out):
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint64 and arr.layout == "C"):
            return None
    if not all(isinstance(t, types.Integer) for t in (uo, bo, count, oo)):
        return None
    return types.none(u, types.intp, b, types.intp, types.intp, out, types.intp)


@intrinsic
def clmul_rows2(typingctx, u, uo, b, bo, count, out, oo):
    """Rows r, r + 1 (r = 0 at uo) of the sliding dot products over ``count`` columns -> 4 words."""
    sig = _rows_typer(u, uo, b, bo, count, out, oo)
    return (sig, _rows_codegen(2)) if sig is not None else None


def _rows8_by_pairs(context, builder, signature, args):
    """Eight rows as four 128-bit two-row passes (hosts without 512-bit VPCLMULQDQ)."""
    narrow = _rows_codegen(2)
    for k in range(4):
        shifted = list(args)
        shifted[1] = builder.add(args[1], ir.Constant(args[1].type, 2 * k))
        shifted[6] = builder.add(args[6], ir.Constant(args[6].type, 4 * k))
        narrow(context, builder, signature, shifted)
    return context.get_dummy_value()


@intrinsic
def clmul_rows8(typingctx, u, uo, b, bo, count, out, oo):
    """Rows r .. r + 7 with 512-bit VPCLMULQDQ -> 16 words (four 128-bit passes without it)."""
    sig = _rows_typer(u, uo, b, bo, count, out, oo)
    if sig is None:
        return None
    return sig, _rows_codegen(8) if has_vpclmul() else _rows8_by_pairs


@intrinsic
def clmul_rows8_by_pairs(typingctx, u, uo, b, bo, count, out, oo):
    """clmul_rows8 as compiled on hosts without VPCLMULQDQ, so tests can check that path here."""
    sig = _rows_typer(u, uo, b, bo, count, out, oo)
    return (sig, _rows8_by_pairs) if sig is not None else None
