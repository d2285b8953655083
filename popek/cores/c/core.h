/* The P32 C core: the same contract as popek/cores/reference.py, over the same flat int64 state.
 *
 * The constants below mirror popek/isa/state.py and popek/isa/spec.py.  Keep them in sync by hand: the cffi
 * module exposes every one of them, and tests/test_c_core.py compares each with its Python twin.
 */
#ifndef P32_CORE_H
#define P32_CORE_H

#include <stdint.h>

/* State slots (popek/isa/state.py). */
#define P32_R0 0 /* r0..r15 at 0..15 */
#define P32_PC 16
#define P32_CR0 17 /* control register n at P32_CR0 + n */
#define P32_PSW 17
#define P32_EPC 18
#define P32_EPSW 19
#define P32_CAUSE 20
#define P32_BADADDR 21
#define P32_IVT 22
#define P32_BASE 23
#define P32_BOUND 24
#define P32_EBASE 25
#define P32_EBOUND 26
#define P32_TIMER 27
#define P32_SCRATCH 28
#define P32_CYCLE 29
#define P32_PENDING 30
#define P32_DEVNUM 31
#define P32_FLAGS 32
#define P32_XCAUSE 33
#define P32_XINFO 34
#define P32_IO_PORT 35
#define P32_IO_WRITE 36
#define P32_IO_VALUE 37
#define P32_IO_REG 38
#define P32_STEPS 39
#define P32_STATUS 40
#define P32_PROFILE 48
#define P32_REWRITE_SLOTS 88 /* 88-103: binary-rewriting support (below) */
#define P32_PV_SLOTS 104     /* 104-119: paravirtual support (below) */
#define P32_NSLOTS 128

#define P32_PEND_TIMER 1
#define P32_PEND_DEVICE 2
#define P32_F_TRAPS_TO_HOST 1
#define P32_F_HCALL_TO_HOST 2

/* Exit codes (popek/isa/state.py). */
#define P32_EXIT_HALT 0
#define P32_EXIT_BUDGET 1
#define P32_EXIT_TRAP 2
#define P32_EXIT_IO 3
#define P32_EXIT_HCALL 4
#define P32_EXIT_IDLE 5
#define P32_EXIT_ERROR 6

/* binary-rewriting support (popek/isa/state.py; docs/isa.md, "Binary-rewriting support") */
#define P32_F_REWRITE 4
#define P32_RW_SHADOW 88 /* D: the shadow copy of physical address p is at p - D */
#define P32_RW_FETCH 89  /* non-zero: fetch from the shadow copy */
#define P32_RW_VPEND 90  /* the virtual CPU's pending interrupts */
#define P32_VCR0 91      /* virtual control register n at P32_VCR0 + n */
#define P32_EXIT_XLATE 7
#define P32_EXIT_CALLOUT 8
#define P32_RW_OP_XLATE 192   /* 0xC0: the marker */
#define P32_RW_OP_CALLOUT 193 /* 0xC1 */
#define P32_RW_OP_LAST 223    /* 0xDF */
#define P32_RW_TWIN 128       /* opcode distance from a system instruction to its twin */

/* paravirtual support (popek/isa/state.py; docs/paravirt.md) */
#define P32_F_PV 8
#define P32_PV_SHARED 104 /* host address of the shared area */
#define P32_PV_ENTRY 105  /* the guest kernel's trap entry */
#define P32_PV_KBASE 106  /* the kernel context's relocation */
#define P32_PV_KBOUND 107
#define P32_PV_KMODE 108  /* non-zero while the kernel context runs */
#define P32_PV_DIRECT 109 /* bit c: deliver cause c into the guest kernel */
#define P32_PV_FAST 110   /* bit n: perform hypercall n */
#define P32_PV_NTRAPS 111
#define P32_PV_NIRQS 112
#define P32_PV_NCALLS 113 /* hypercall n counted at P32_PV_NCALLS + n */
#define P32_SH_MASK 0     /* words of the shared area (byte offsets) */
#define P32_SH_PENDING 4
#define P32_SH_EPC 8
#define P32_SH_EPSW 12
#define P32_SH_EBASE 16
#define P32_SH_EBOUND 20
#define P32_SH_CAUSE 24
#define P32_SH_BADADDR 28
#define P32_SH_CORE_BYTES 32
#define P32_HC_IRET 0
#define P32_HC_SET_TIMER 1
#define P32_HC_IRQ 2
#define P32_HC_FAST_LIMIT 3

/* Control registers (popek/isa/spec.py). */
#define P32_CR_PSW 0
#define P32_CR_EPC 1
#define P32_CR_EPSW 2
#define P32_CR_CAUSE 3
#define P32_CR_BADADDR 4
#define P32_CR_IVT 5
#define P32_CR_BASE 6
#define P32_CR_BOUND 7
#define P32_CR_EBASE 8
#define P32_CR_EBOUND 9
#define P32_CR_TIMER 10
#define P32_CR_SCRATCH 11
#define P32_CR_CYCLE 12
#define P32_NUM_CRS 13
#define P32_PSW_S 1
#define P32_PSW_IE 2

/* Trap causes (popek/isa/spec.py). */
#define P32_SYSCALL 1
#define P32_PRIV 2
#define P32_ILLEGAL 3
#define P32_MEM_FAULT 4
#define P32_ALIGN 5
#define P32_DIVZERO 6
#define P32_BREAK 7
#define P32_TIMER_IRQ 16
#define P32_DEVICE_IRQ 17

/* Profile: one behaviour code per key, at P32_PROFILE + index (spec.PROFILE_KEYS order). */
#define P32_TRAP 0
#define P32_EXECUTE 1
#define P32_IGNORE 2
#define P32_K_IRET 0
#define P32_K_HALT 1
#define P32_K_WFI 2
#define P32_K_IN 3
#define P32_K_OUT 4
#define P32_K_GETPSW 5
#define P32_K_SETPSW 6
#define P32_K_GETBASE 7
#define P32_K_MFCR 8  /* mfcr.<cr n> at P32_K_MFCR + n */
#define P32_K_MTCR 21 /* mtcr.<cr n> at P32_K_MTCR + n */

/* Run at most `budget` steps of the machine in state/mem (memsize bytes); return the exit code. */
int p32_run(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget);

#endif
