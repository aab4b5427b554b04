"""Make chosen system calls fail in this thread and in every process it starts from now
on, as a sandbox's seccomp profile does (Docker's default refuses kcmp, for one).

x86_64 only (``supported()``).  A rule is (system call, argument, value, errno): the call
fails with ``errno`` when its argument number ``argument`` equals ``value`` (any value if
``argument`` is None); ``errno`` 0 makes it return 0 without doing anything.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["NR", "install", "supported"]

NR = {"write": 1, "execve": 59, "kcmp": 312, "clone3": 435}

_AUDIT_ARCH_X86_64 = 0xC000003E
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


class _Insn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


def supported() -> bool:
    return platform.machine() == "x86_64"


def install(rules: list[tuple[str, int | None, int, int]]) -> None:
    # struct seccomp_data: nr at 0, arch at 4, then 64-bit args from 16 (little-endian).
    prog = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, _AUDIT_ARCH_X86_64), (_RET, 0, 0, _ALLOW)]
    for name, arg, value, err in rules:
        prog.append((_LD_ABS, 0, 0, 0))
        if arg is None:
            prog += [(_JEQ, 0, 1, NR[name]), (_RET, 0, 0, _ERRNO | err)]
            continue
        low, high = value & 0xFFFFFFFF, value >> 32
        prog += [
            (_JEQ, 0, 5, NR[name]),
            (_LD_ABS, 0, 0, 16 + 8 * arg),
            (_JEQ, 0, 3, low),
            (_LD_ABS, 0, 0, 20 + 8 * arg),
            (_JEQ, 0, 1, high),
            (_RET, 0, 0, _ERRNO | err),
        ]
    prog.append((_RET, 0, 0, _ALLOW))
    insns = (_Insn * len(prog))(*(_Insn(*i) for i in prog))
    fprog = _Prog(len(prog), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    mode = ctypes.c_ulong(_SECCOMP_MODE_FILTER)
    if libc.prctl(_PR_SET_SECCOMP, mode, ctypes.byref(fprog), zero, zero) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
