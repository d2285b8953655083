# monitor.s - a trap-and-emulate hypervisor in P32 (docs/vmm-native.md): the monitor, without its guests.
#
# It boots at address 0 in supervisor mode on the bare machine, and runs each guest kernel in real user mode
# inside its own region of memory, with a virtual CPU per guest: every privileged instruction a guest kernel
# executes traps here and is emulated on its virtual CPU, every other trap is reflected into the guest
# kernel's own vector, the guest's timer interrupt is injected at the very instruction where the bare machine
# takes it, and the real timer slices the processor between the guests. A file that includes this one names
# the guests with GUEST and ends with GUESTS_END (vmm.s is the default set).
#
# Conventions: the monitor keeps interrupts off; r13 is the current virtual CPU everywhere in the monitor,
# sp its stack; routines may clobber r1-r12 and lr. The globals are below 32 KiB, so `ld rX, name(r0)` reaches
# them without a free register, which the trap entry and exit do not have.

.equ VMM_SIZE,      0x10000         # the monitor's own memory; the guests' regions follow it
.include "../kernel/frame.s"         # the layout of a saved register frame
.equ MAX_GUESTS,    4
.equ QUANTUM,       20000           # guest instructions per time slice
.equ LINE_MAX,      200             # a guest's console line is shown when it ends or reaches this length

# The virtual CPU: the first 31 words are the guest's registers, pc and control registers at the slots of
# the machine state (popek/isa/state.py: r0-r15, pc, the 13 CRs, pending), so a host can read it as one.
.equ V_PC,          64
.equ V_PSW,         68
.equ V_EPC,         72
.equ V_EPSW,        76
.equ V_CAUSE,       80
.equ V_BADADDR,     84
.equ V_IVT,         88
.equ V_BASE,        92
.equ V_BOUND,       96
.equ V_EBASE,       100
.equ V_EBOUND,      104
.equ V_TIMER,       108
.equ V_CYCLE,       116
.equ V_PENDING,     120             # bit 0: the guest's timer interrupt is pending
.equ V_CR,          V_PSW           # control register n at V_CR + 4n
.equ V_GBASE,       124             # where the guest's memory starts (physical), and its size
.equ V_GSIZE,       128
.equ V_STATE,       132             # RUNNING, HALTED or STOPPED
.equ V_STATUS,      136             # its exit status once halted
.equ V_SLICE,       140             # instructions left in its time slice (signed)
.equ V_EXITS,       144             # traps that brought it into the monitor
.equ V_EMULATED,    148             # instructions the monitor performed for it
.equ V_ID,          152             # 1, 2, ...
.equ V_LINELEN,     156
.equ V_LINE,        256             # its console line buffer
.equ VCPU_SHIFT,    9
.equ VCPU_SIZE,     1 << VCPU_SHIFT
.equ RUNNING,       0
.equ HALTED,        1
.equ STOPPED,       2

.equ PSW_S,         1
.equ PSW_IE,        2
.equ CAUSE_PRIV,    2
.equ CAUSE_TIMER,   16
.equ CAUSE_DEVICE,  17
.equ ENTRY_EXIT,    6               # monitor instructions between the exit's cycle read and the entry's
.equ EXIT_TICKS,    5               # monitor instructions the real timer counts after it is armed

GUEST_NEXT = VMM_SIZE

# GUEST n, "file", size[, "DEFINE"]: guest number n (1, 2, ... in order) is the image of file (a source is
# assembled on its own, with the define), in a memory of size bytes that follows the previous guest's.
.macro GUEST n, file, size, def=""
    .org GUEST_NEXT
    G\n\()_BASE = GUEST_NEXT
    G\n\()_SIZE = \size
    .incbin \file, \def
    GUEST_NEXT = GUEST_NEXT + \size
    NGUESTS = \n
    .if . > GUEST_NEXT
        .error "a guest's image is larger than its memory"
    .endif
    .if \n > MAX_GUESTS
        .error "too many guests"
    .endif
.endm

# GUESTS_END: after the last GUEST; the table's unused entries are empty.
.macro GUESTS_END
    .ifndef NGUESTS
        .error "no guests: name them with GUEST"
    .endif
    .ifndef G2_BASE
        G2_BASE = 0
        G2_SIZE = 0
    .endif
    .ifndef G3_BASE
        G3_BASE = 0
        G3_SIZE = 0
    .endif
    .ifndef G4_BASE
        G4_BASE = 0
        G4_SIZE = 0
    .endif
    VMM_END = GUEST_NEXT
.endm

# --- boot --------------------------------------------------------------------------------------------------
boot:
    la sp, stack_top
    la r4, vmm_trap
    mtcr ivt, r4
    la r2, s_boot
    call vputs
    la r2, guest_table
    ld r2, 0(r2)
    call vputdec
    la r2, s_guests
    call vputs
    mfcr r4, bound                  # at reset, the size of memory: every guest's region must be in it
    li r5, VMM_END
    bgeu r4, r5, 1f
    la r2, s_memory
    call vputs
    li r2, VMM_END
    call vputdec
    la r2, s_bytes
    call vputs
    li r1, 1
    halt
1:  la r10, guest_table             # set up one virtual CPU per guest, as the machine is at reset
    ld r11, 0(r10)
    la r13, vcpus
    li r12, 1
2:  ld r4, 4(r10)
    st r4, V_GBASE(r13)
    ld r4, 8(r10)
    st r4, V_GSIZE(r13)
    st r4, V_BOUND(r13)             # R = (0, its memory size)
    li r4, PSW_S                    # supervisor mode, interrupts off, pc 0
    st r4, V_PSW(r13)
    li r4, QUANTUM
    st r4, V_SLICE(r13)
    st r12, V_ID(r13)
    addi r10, r10, 8
    addi r13, r13, VCPU_SIZE
    addi r12, r12, 1
    ble r12, r11, 2b
    la r13, vcpus
    j resume

# --- the trap path: from a guest into the monitor ------------------------------------------------------------
vmm_trap:
    mtcr scratch, r15               # free one register; the next instruction reads the time at once
    mfcr r15, cycle
    st r15, g_entry(r0)
    ld r15, g_cur(r0)
    FRAME_SAVE_R1_R14 r15
    mfcr r1, scratch
    st r1, 60(r15)
    mov r13, r15
    la sp, stack_top
    mfcr r1, epsw
    andi r1, r1, PSW_S
    bnez r1, panic                  # a trap in the monitor itself: a bug, not a guest's doing
    mfcr r1, epc                    # the guest's pc: its own virtual address, since its R is composed
    st r1, V_PC(r13)
    ld r1, V_EXITS(r13)
    addi r1, r1, 1
    st r1, V_EXITS(r13)
    ld r1, V_SLICE(r13)             # an exit uses the slice up too, so a guest caught in a storm of traps
    addi r1, r1, -1                 # that retire nothing (an ivt outside its memory) still gives way
    st r1, V_SLICE(r13)
    # Exact time: the guest retired what the real count moved on since the exit, less the monitor's own.
    ld r1, g_entry(r0)
    ld r2, g_exit(r0)
    sub r1, r1, r2
    addi r1, r1, -ENTRY_EXIT
    ld r2, V_CYCLE(r13)
    add r2, r2, r1
    st r2, V_CYCLE(r13)
    ld r2, V_SLICE(r13)
    sub r2, r2, r1
    st r2, V_SLICE(r13)
    ld r2, V_TIMER(r13)             # the guest's timer counts its instructions only
    beqz r2, 1f
    bltu r1, r2, 2f
    st zero, V_TIMER(r13)           # it expired (where the guest's IE was off, the guest ran on past it)
    ld r2, V_PENDING(r13)
    ori r2, r2, 1
    st r2, V_PENDING(r13)
    j 1f
2:  sub r2, r2, r1
    st r2, V_TIMER(r13)
1:  mfcr r1, cause
    mfcr r2, badaddr
    li r3, CAUSE_TIMER
    beq r1, r3, after               # the real timer: the guest's time was accounted above
    li r3, CAUSE_DEVICE
    beq r1, r3, after               # no device interrupts the guests: nothing to do
    li r3, CAUSE_PRIV
    bne r1, r3, 3f
    ld r3, V_PSW(r13)
    andi r3, r3, PSW_S
    bnez r3, emulate                # a privileged instruction of the guest kernel
3:  call reflect                    # everything else is the guest's own trap
after:                              # the guest stopped, used up its slice, or goes on
    ld r3, V_STATE(r13)
    bnez r3, schedule
    ld r3, V_SLICE(r13)
    bge zero, r3, schedule
    j resume

# reflect: the trap entry of ISA §4 on the virtual CPU (r1 = cause, r2 = badaddr); clobbers r3
reflect:
    ld r3, V_PC(r13)
    st r3, V_EPC(r13)
    ld r3, V_PSW(r13)
    st r3, V_EPSW(r13)
    ld r3, V_BASE(r13)
    st r3, V_EBASE(r13)
    ld r3, V_BOUND(r13)
    st r3, V_EBOUND(r13)
    st r1, V_CAUSE(r13)
    st r2, V_BADADDR(r13)
    li r3, PSW_S
    st r3, V_PSW(r13)
    st zero, V_BASE(r13)
    ld r3, V_GSIZE(r13)
    st r3, V_BOUND(r13)
    ld r3, V_IVT(r13)
    st r3, V_PC(r13)
    ret

# --- the way back: from the monitor into guest r13 ---------------------------------------------------------
resume:
    ld r3, V_PSW(r13)               # a virtual interrupt due now is taken before the next instruction
    andi r3, r3, PSW_IE
    beqz r3, 1f
    ld r3, V_PENDING(r13)
    andi r3, r3, 1
    beqz r3, 1f
    li r1, CAUSE_TIMER
    li r2, 0
    call reflect
1:  ld r1, V_BASE(r13)              # R composed: the guest's own, confined to its region
    ld r2, V_GSIZE(r13)
    ld r3, V_GBASE(r13)
    bgeu r1, r2, 2f                 # a base beyond its memory: every access faults, as on its machine
    sub r4, r2, r1
    add r5, r3, r1
    ld r6, V_BOUND(r13)
    bltu r6, r4, 3f
    mov r6, r4
    j 3f
2:  mov r5, r3
    li r6, 0
3:  mtcr ebase, r5
    mtcr ebound, r6
    ld r1, V_PC(r13)
    mtcr epc, r1
    ld r1, V_PSW(r13)               # always real user mode; IE mirrors the guest's own, as under trap
    andi r1, r1, PSW_IE
    mtcr epsw, r1
    ld r1, V_SLICE(r13)             # run to the end of the slice or the guest's timer, whichever is first
    ld r2, V_TIMER(r13)
    beqz r2, 4f
    bgeu r2, r1, 4f
    mov r1, r2
4:  addi r1, r1, EXIT_TICKS
    st r1, g_arm(r0)
    ld r1, 56(r13)
    st r1, g_r14(r0)
    ld r1, 60(r13)
    st r1, g_r15(r0)
    st r13, g_cur(r0)
    mov r15, r13
    FRAME_LOAD_R1_R13 r15
    ld r14, g_arm(r0)
    mtcr timer, r14                 # EXIT_TICKS instructions follow, up to the iret: they count first
    mfcr r14, cycle
    st r14, g_exit(r0)
    ld r14, g_r14(r0)
    ld r15, g_r15(r0)
    iret

# --- scheduling --------------------------------------------------------------------------------------------
schedule:                           # a new slice for the next running guest after r13, round robin
    li r3, QUANTUM
    st r3, V_SLICE(r13)
    la r10, guest_table
    ld r11, 0(r10)
    shli r12, r11, VCPU_SHIFT
    la r10, vcpus
    add r12, r12, r10               # r12: the end of the virtual CPUs in use
    mov r4, r13
1:  addi r4, r4, VCPU_SIZE
    bltu r4, r12, 2f
    la r4, vcpus
2:  ld r5, V_STATE(r4)
    beqz r5, 3f
    addi r11, r11, -1
    bnez r11, 1b
    j shutdown                      # nobody runs any more
3:  mov r13, r4
    j resume

shutdown:                           # status 0 when every guest halted with status 0
    la r2, s_done
    call vputs
    li r1, 0
    la r10, guest_table
    ld r11, 0(r10)
    la r13, vcpus
1:  ld r4, V_STATE(r13)
    addi r4, r4, -HALTED
    ld r5, V_STATUS(r13)
    or r4, r4, r5                   # zero only for a guest that halted with status 0
    beqz r4, 2f
    li r1, 1
2:  addi r13, r13, VCPU_SIZE
    addi r11, r11, -1
    bnez r11, 1b
    halt

panic:
    la r2, s_panic
    call vputs
    mfcr r2, cause
    call vputdec
    la r2, s_at
    call vputs
    mfcr r2, epc
    call vputhex
    li r2, '\n'
    call vputc
    li r1, 255
    halt

# --- emulation of a guest kernel's privileged instruction (r2 = its word) ---------------------------------
emulate:
    shri r3, r2, 24                 # opcode
    shri r4, r2, 20                 # a: the register operand
    andi r4, r4, 15
    andi r5, r2, 0xFFFF             # the control register or port
    shli r7, r4, 2
    add r7, r7, r13                 # r7: the slot of register a
    ld r6, 0(r7)                    # r6: its value
    addi r8, r3, -0x48
    sltiu r9, r8, 11
    beqz r9, emu_unknown
    shli r8, r8, 2
    la r9, emu_table
    add r9, r9, r8
    ld r9, 0(r9)
    jalr zero, 0(r9)
emu_unknown:                        # not one this monitor knows: the guest's own trap
    li r1, CAUSE_PRIV
    call reflect
    j after

emu_table:                          # by opcode, from iret (0x48) to getbase (0x52)
    .word emu_iret, emu_halt, emu_wfi, emu_mfcr, emu_mtcr, emu_in, emu_out, emu_unknown, emu_getpsw, emu_setpsw
    .word emu_getbase

emu_mfcr:                           # cycle and timer read as before this instruction's own tick
    shli r8, r5, 2
    add r8, r8, r13
    ld r6, V_CR(r8)
    j set_a
emu_getpsw:
    ld r6, V_PSW(r13)
    j set_a
emu_getbase:
    ld r6, V_BASE(r13)
    j set_a
emu_in:                             # the guests have no console input and no other device
    li r6, -1
set_a:                              # register a <- r6 (r0 stays 0), and the instruction retires
    beqz r4, retire
    st r6, 0(r7)
    j retire

emu_mtcr:
    li r8, 12
    beq r5, r8, retire              # cycle ignores the write
    li r8, 10
    beq r5, r8, 2f
    bnez r5, 1f
    andi r6, r6, 3                  # psw keeps bits 0-1
1:  shli r8, r5, 2
    add r8, r8, r13
    st r6, V_CR(r8)
    j retire
2:  st r6, V_TIMER(r13)             # timer: clears a pending timer interrupt, and does not tick itself
    ld r8, V_PENDING(r13)
    andi r8, r8, 2
    st r8, V_PENDING(r13)
    ld r8, V_PC(r13)
    addi r8, r8, 4
    st r8, V_PC(r13)
    j retired

emu_setpsw:
    andi r6, r6, 3
    st r6, V_PSW(r13)
    j retire

emu_iret:
    ld r8, V_EPSW(r13)
    andi r8, r8, 3
    st r8, V_PSW(r13)
    ld r8, V_EBASE(r13)
    st r8, V_BASE(r13)
    ld r8, V_EBOUND(r13)
    st r8, V_BOUND(r13)
    ld r8, V_EPC(r13)
    st r8, V_PC(r13)
    j tick

emu_out:
    bnez r5, retire                 # only the console (port 0) is there
    andi r2, r6, 0xFF
    call guest_putc
    j retire

emu_halt:
    ld r8, 4(r13)                   # exit status: the guest's r1
    andi r8, r8, 0xFF
    st r8, V_STATUS(r13)
    li r8, HALTED
    st r8, V_STATE(r13)
    ld r8, V_PC(r13)                # halt retires like any instruction before the guest stops
    addi r8, r8, 4
    st r8, V_PC(r13)
    call tick_timer
    call count_retired
    call flush_partial
    call vput_tag_vmm
    ld r2, V_ID(r13)
    call vputdec
    la r2, s_halted
    call vputs
    ld r2, V_STATUS(r13)
    call vputdec
    la r2, s_after
    call vputs
    ld r2, V_CYCLE(r13)
    call vputdec
    la r2, s_insns
    call vputs
    j after

emu_wfi:                            # the guest waits: its time skips ahead to its timer's expiry at once
    ld r8, V_PENDING(r13)
    bnez r8, retire
    ld r8, V_TIMER(r13)
    beqz r8, 1f
    ld r9, V_CYCLE(r13)
    add r9, r9, r8
    st r9, V_CYCLE(r13)
    st zero, V_TIMER(r13)
    li r8, 1
    st r8, V_PENDING(r13)
    j retire
1:  li r8, STOPPED                  # nothing pending, timer off, no device: it would wait forever
    st r8, V_STATE(r13)
    call flush_partial
    call vput_tag_vmm
    ld r2, V_ID(r13)
    call vputdec
    la r2, s_stuck
    call vputs
    ld r2, V_PC(r13)
    call vputhex
    la r2, s_never
    call vputs
    j after

retire:                             # the emulated instruction retires: pc moves on, time ticks
    ld r8, V_PC(r13)
    addi r8, r8, 4
    st r8, V_PC(r13)
tick:                               # (pc already set) the guest's timer ticks
    call tick_timer
retired:                            # its cycle counts it
    call count_retired
    j after

tick_timer:                         # clobbers r8
    ld r8, V_TIMER(r13)
    beqz r8, 1f
    addi r8, r8, -1
    st r8, V_TIMER(r13)
    bnez r8, 1f
    ld r8, V_PENDING(r13)
    ori r8, r8, 1
    st r8, V_PENDING(r13)
1:  ret

count_retired:                      # clobbers r8
    ld r8, V_CYCLE(r13)
    addi r8, r8, 1
    st r8, V_CYCLE(r13)
    ld r8, V_SLICE(r13)
    addi r8, r8, -1
    st r8, V_SLICE(r13)
    ld r8, V_EMULATED(r13)
    addi r8, r8, 1
    st r8, V_EMULATED(r13)
    ret

# --- the guests' consoles: each line tagged "vmN | " (ended by the guest) or "vmN + " (cut short) -------------
guest_putc:                         # r2 = a byte the guest wrote; clobbers r2-r9
    push lr
    ld r3, V_LINELEN(r13)
    add r4, r13, r3
    stb r2, V_LINE(r4)
    addi r3, r3, 1
    st r3, V_LINELEN(r13)
    li r4, '\n'
    beq r2, r4, 1f
    li r4, LINE_MAX
    bltu r3, r4, 2f
    call flush_cut
    j 2f
1:  li r2, '|'
    call flush_line
2:  pop lr
    ret

flush_partial:                      # what is left of a line when the guest stops
    ld r3, V_LINELEN(r13)
    beqz r3, 1f
flush_cut:
    li r2, '+'
    push lr
    call flush_line
    li r2, '\n'
    call vputc
    pop lr
1:  ret

flush_line:                         # "vmN" r2 " " and the buffered bytes; the buffer empties
    push lr
    push r2
    la r2, s_vm
    call vputs
    ld r2, V_ID(r13)
    call vputdec
    li r2, ' '
    call vputc
    pop r2
    call vputc
    li r2, ' '
    call vputc
    addi r5, r13, V_LINE
    ld r6, V_LINELEN(r13)
    add r6, r6, r5
1:  ldbu r2, 0(r5)
    out 0, r2
    addi r5, r5, 1
    bltu r5, r6, 1b
    st zero, V_LINELEN(r13)
    pop lr
    ret

# --- the monitor's own console output (clobbers r2-r7) -------------------------------------------------------
vput_tag_vmm:                       # "vmm | vm"
    la r2, s_vmm_vm
vputs:                              # a NUL-terminated string
    mov r4, r2
1:  ldbu r2, 0(r4)
    beqz r2, 2f
    out 0, r2
    addi r4, r4, 1
    j 1b
2:  ret

vputc:
    out 0, r2
    ret

vputdec:                            # an unsigned number in decimal
    addi sp, sp, -12
    addi r4, sp, 12
    li r6, 10
1:  remu r5, r2, r6
    addi r5, r5, '0'
    addi r4, r4, -1
    stb r5, 0(r4)
    divu r2, r2, r6
    bnez r2, 1b
    addi r6, sp, 12
2:  ldbu r5, 0(r4)
    out 0, r5
    addi r4, r4, 1
    bne r4, r6, 2b
    addi sp, sp, 12
    ret

vputhex:                            # 0x and eight hex digits
    mov r4, r2
    li r2, '0'
    out 0, r2
    li r2, 'x'
    out 0, r2
    li r5, 28
1:  shr r6, r4, r5
    andi r6, r6, 15
    la r7, hexdigits
    add r7, r7, r6
    ldbu r6, 0(r7)
    out 0, r6
    addi r5, r5, -4
    bge r5, zero, 1b
    ret

# --- data --------------------------------------------------------------------------------------------------
s_boot:     .asciz "vmm | native monitor: "
s_guests:   .asciz " guests\n"
s_memory:   .asciz "vmm | not enough memory: the guests need "
s_bytes:    .asciz " bytes\n"
s_vmm_vm:   .asciz "vmm | vm"
s_vm:       .asciz "vm"
s_halted:   .asciz " halted with status "
s_after:    .asciz " after "
s_insns:    .asciz " instructions\n"
s_stuck:    .asciz " stopped: wfi at "
s_never:    .asciz " can never end\n"
s_done:     .asciz "vmm | all guests stopped\n"
s_panic:    .asciz "vmm | panic: trap in the monitor, cause "
s_at:       .asciz " at "
hexdigits:  .ascii "0123456789abcdef"

    .align 4
g_cur:      .word vcpus             # the guest on the processor
g_entry:    .word 0                 # the real cycle count read at the last entry,
g_exit:     .word 0                 # and at the last exit
g_arm:      .word 0                 # the real timer's value for the next exit
g_r14:      .word 0                 # the guest's r14 and r15 on the way out
g_r15:      .word 0
guest_table:                        # the number of guests, then (memory start, size) of each
    .word NGUESTS
    .word G1_BASE, G1_SIZE, G2_BASE, G2_SIZE, G3_BASE, G3_SIZE, G4_BASE, G4_SIZE
            .space 1024
stack_top:
    .align VCPU_SIZE
vcpus:      .space MAX_GUESTS * VCPU_SIZE
vcpus_end:
    .if . > 0x8000
        .error "the monitor's globals must stay below 32 KiB"
    .endif
