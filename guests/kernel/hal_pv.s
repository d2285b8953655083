# hal_pv.s - the kernel's hardware abstraction layer for the paravirtual monitor (`pv`; docs/paravirt.md).
#
# Built with -D PARAVIRT. No macro here assembles a sensitive instruction: the trap state, the virtual
# interrupt mask and the console buffer are words of the shared area, read and written with plain loads and
# stores addressed from r0 (the area sits near address 0), and the rest is a hypercall (`hcall N`, arguments
# in r1 and r2, result in r1). As in hal_native.s, a macro changes only the registers named in its arguments:
# a macro that needs r1 or r2 for a hypercall keeps their values in the HAL's own words meanwhile.
#
# Included first, this file also starts the image: a jump over the boot note, which tells the monitor that
# this is a paravirtual kernel and where its shared area is, and over the shared area itself.

# --- the interface (vmm/monitors/paravirt.py; tests/test_paravirt.py checks these against it) -------------
.equ PV_MAGIC,          0xF0505632
.equ SH_MASK,           0           # virtual interrupts masked (non-zero) or enabled (0)
.equ SH_PENDING,        4           # a virtual timer interrupt is pending
.equ SH_EPC,            8           # the frame of the last trap: the interrupted context's pc,
.equ SH_EPSW,           12          # its psw (S: the kernel was running; IE: interrupts were unmasked),
.equ SH_EBASE,          16          # its relocation,
.equ SH_EBOUND,         20
.equ SH_CAUSE,          24          # the cause and badaddr
.equ SH_BADADDR,        28
.equ SH_FEATURES,       32          # bit n: hypercall n costs no exit
.equ SH_CONS_LEN,       36          # bytes in the console buffer
.equ SH_MC_COUNT,       40          # multicall entries queued
.equ SH_NET_EVENTS,     44          # network card events posted by the monitor; the guest clears it (its ack)
.equ SH_MC,             64          # multicall entries: number, argument 1, argument 2, result
.equ MC_ENTRY,          16
.equ MC_OP,             0
.equ MC_ARG1,           4
.equ SH_CONS_BUF,       192
.equ CONS_SIZE,         256
.equ SH_SIZE,           448

.equ HC_IRET,           0
.equ HC_SET_TIMER,      1
.equ HC_IRQ,            2
.equ HC_SET_TRAP_ENTRY, 3
.equ HC_CONSOLE_WRITE,  4
.equ HC_CONSOLE_FLUSH,  5
.equ HC_BLOCK,          6
.equ HC_HALT,           7
.equ HC_CYCLE,          8
.equ HC_MULTICALL,      9
.equ HC_NET_SETUP,      10
.equ HC_NET_NOTIFY,     11

# --- the boot note and the shared area ---------------------------------------------------------------------
    j hal_pv_end
    .word PV_MAGIC
    .word hal_shared
hal_shared:
    .word 1                         # the mask: masked at boot, as a reset processor has IE off
    .space SH_SIZE - 4
hal_scratch:    .word 0             # HAL_SCRATCH_SAVE / HAL_SCRATCH_LOAD
hal_t1:         .word 0             # r1 while a macro borrows it
hal_t2:         .word 0             # a macro's second temporary
hal_char:       .word 0             # the byte HAL_PUTC is writing
hal_pv_end:

.equ HAL_MASK,      hal_shared + SH_MASK
.equ HAL_PENDING,   hal_shared + SH_PENDING
.equ HAL_EPC,       hal_shared + SH_EPC
.equ HAL_EPSW,      hal_shared + SH_EPSW
.equ HAL_EBASE,     hal_shared + SH_EBASE
.equ HAL_EBOUND,    hal_shared + SH_EBOUND
.equ HAL_CAUSE,     hal_shared + SH_CAUSE
.equ HAL_BADADDR,   hal_shared + SH_BADADDR
.equ HAL_FEATURES,  hal_shared + SH_FEATURES
.equ HAL_CONS_LEN,  hal_shared + SH_CONS_LEN
.equ HAL_CONS_BUF,  hal_shared + SH_CONS_BUF
.equ HAL_CONS_END,  HAL_CONS_BUF + CONS_SIZE
.equ HAL_NET_EVENTS, hal_shared + SH_NET_EVENTS
.equ HAL_MC_COUNT,  hal_shared + SH_MC_COUNT
.equ HAL_MC0,       hal_shared + SH_MC              # a queued HC_SET_TIMER
.equ HAL_MC1,       hal_shared + SH_MC + MC_ENTRY   # the HC_IRET or HC_BLOCK that makes the batch

# --- trap state ----------------------------------------------------------------------------------------------
.macro HAL_SET_IVT reg              # register the trap entry
    st r1, hal_t1(zero)
    mov r1, \reg
    hcall HC_SET_TRAP_ENTRY
    ld r1, hal_t1(zero)
.endm
.macro HAL_SCRATCH_SAVE reg
    st \reg, hal_scratch(zero)
.endm
.macro HAL_SCRATCH_LOAD reg
    ld \reg, hal_scratch(zero)
.endm
.macro HAL_GET_CAUSE reg
    ld \reg, HAL_CAUSE(zero)
.endm
.macro HAL_GET_BADADDR reg
    ld \reg, HAL_BADADDR(zero)
.endm
.macro HAL_GET_EPC reg
    ld \reg, HAL_EPC(zero)
.endm
.macro HAL_GET_EPSW reg
    ld \reg, HAL_EPSW(zero)
.endm

# --- the user context that HAL_ENTER_USER switches to ---------------------------------------------------------
.macro HAL_SET_EPC reg
    st \reg, HAL_EPC(zero)
.endm
.macro HAL_SET_EPSW reg
    st \reg, HAL_EPSW(zero)
.endm
.macro HAL_SET_EBASE reg
    st \reg, HAL_EBASE(zero)
.endm
.macro HAL_SET_EBOUND reg
    st \reg, HAL_EBOUND(zero)
.endm
.macro HAL_ENTER_USER               # HC_IRET, or the batch of a queued timer setting and HC_IRET
    HAL_MAKE_BATCH HC_IRET
.endm

# --- interrupts, timer, time ----------------------------------------------------------------------------------
.macro HAL_IRQ_DISABLE tmp          # a plain store: no exit
    li \tmp, 1
    st \tmp, HAL_MASK(zero)
.endm
.macro HAL_IRQ_ENABLE tmp           # a hypercall only when an interrupt is pending
    st zero, HAL_MASK(zero)
    ld \tmp, HAL_PENDING(zero)
    beqz \tmp, hal_on\@
    hcall HC_IRQ
hal_on\@:
.endm
.macro HAL_TIMER_SET reg            # HC_SET_TIMER where the processor performs it, else queued for the batch
    st \reg, hal_t2(zero)
    st r1, hal_t1(zero)
    ld r1, HAL_FEATURES(zero)
    andi r1, r1, 1 << HC_SET_TIMER
    beqz r1, hal_queue\@
    ld r1, hal_t2(zero)
    hcall HC_SET_TIMER
    j hal_done\@
hal_queue\@:                        # made by the next HAL_ENTER_USER or HAL_WFI, in the same exit
    ld r1, hal_t2(zero)
    st r1, HAL_MC0 + MC_ARG1(zero)
    li r1, HC_SET_TIMER
    st r1, HAL_MC0 + MC_OP(zero)
    li r1, 2
    st r1, HAL_MC_COUNT(zero)
hal_done\@:
    ld r1, hal_t1(zero)
.endm
.macro HAL_CYCLE reg
    st r1, hal_t1(zero)
    hcall HC_CYCLE
    st r1, hal_t2(zero)
    ld r1, hal_t1(zero)
    ld \reg, hal_t2(zero)
.endm
.macro HAL_WFI                      # HC_BLOCK, or the batch of a queued timer setting and HC_BLOCK
    HAL_MAKE_BATCH HC_BLOCK
.endm
.macro HAL_MAKE_BATCH call          # (internal) make `call` last in the queued batch, or alone
    st r1, hal_t1(zero)
    ld r1, HAL_MC_COUNT(zero)
    beqz r1, hal_alone\@
    li r1, \call
    st r1, HAL_MC1 + MC_OP(zero)
    ld r1, hal_t1(zero)
    hcall HC_MULTICALL
    j hal_done\@
hal_alone\@:
    ld r1, hal_t1(zero)
    hcall \call
hal_done\@:
.endm

# --- the network card: the monitor drives it from two hypercalls; its events come as a virtual DEVICE interrupt --
.macro HAL_NET_SETUP reg, res       # HC_NET_SETUP on the block at reg {rx, tx, urx, size}; res <- 0 when it runs
    st r1, hal_t1(zero)
    mov r1, \reg
    hcall HC_NET_SETUP
    st r1, hal_t2(zero)
    ld r1, hal_t1(zero)
    ld \res, hal_t2(zero)
.endm
.macro HAL_NET_NOTIFY tmp           # one HC_NET_NOTIFY for everything the transmit ring holds
    st r1, hal_t1(zero)
    hcall HC_NET_NOTIFY
    ld r1, hal_t1(zero)
.endm
.macro HAL_NET_ACK tmp              # a plain store: the events the monitor posted are seen
    st zero, HAL_NET_EVENTS(zero)
.endm

# --- console and power ----------------------------------------------------------------------------------------
.macro HAL_PUTC reg                 # append to the console buffer; one exit per CONS_SIZE bytes
    stb \reg, hal_char(zero)
    st r1, hal_t1(zero)
    st r2, hal_t2(zero)
    ld r1, HAL_CONS_LEN(zero)
    li r2, CONS_SIZE
    bltu r1, r2, hal_room\@
    hcall HC_CONSOLE_FLUSH          # full: the monitor writes it out and empties it
    li r1, 0
hal_room\@:
    ldbu r2, hal_char(zero)
    stb r2, HAL_CONS_BUF(r1)
    addi r1, r1, 1
    st r1, HAL_CONS_LEN(zero)
    ld r1, hal_t1(zero)
    ld r2, hal_t2(zero)
.endm
.macro HAL_CONS_WRITE from, to, tmp # copy the bytes at from up to to into the console buffer, as Xen's console
    beq \from, \to, hal_none\@      # driver copies into its ring; one HC_CONSOLE_FLUSH per full buffer
    st r1, hal_t1(zero)             # (clobbers from, tmp; none of the three may be r1)
    ld r1, HAL_CONS_LEN(zero)
    addi r1, r1, -CONS_SIZE         # r1: the length less the size, 0 when the buffer is full
hal_next\@:
    bnez r1, hal_room\@
    li r1, CONS_SIZE
    st r1, HAL_CONS_LEN(zero)
    hcall HC_CONSOLE_FLUSH
    li r1, -CONS_SIZE
hal_room\@:
    ldbu \tmp, 0(\from)
    stb \tmp, HAL_CONS_END(r1)
    addi r1, r1, 1
    addi \from, \from, 1
    bne \from, \to, hal_next\@
    addi r1, r1, CONS_SIZE
    st r1, HAL_CONS_LEN(zero)       # after the bytes, as HAL_PUTC
    ld r1, hal_t1(zero)
hal_none\@:
.endm
.macro HAL_HALT                     # stop; exit status r1 & 0xFF (the monitor writes out the console first)
    hcall HC_HALT
.endm
