# trapdemo.s - traps on a bare machine: a tiny kernel runs a relocated user program and handles its traps.
#
# The kernel sets the trap vector, then enters user mode with iret: the user program, assembled at
# USER_BASE, runs at virtual address 0 with R = (USER_BASE, USER_BOUND). It makes a write system call, loads
# past its bound (MEM), executes mfcr (PRIV), divides by zero (DIVZERO), checks that none of this disturbed
# its registers and exits with a system call; the kernel then halts with the status the user asked for.
# The handler saves every user register (scratch frees the first one) and restores them before iret.

        .include "../kernel/frame.s"    # the layout of the saved registers
.equ USER_BASE,     0x4000          # physical address of the user region
.equ USER_BOUND,    0x1000          # its size: user addresses 0 .. 0xFFF
.equ BAD_ADDR,      0x5000          # a user address beyond the bound
.equ EXIT_STATUS,   3
.equ SYS_EXIT,      0               # r2 = status
.equ SYS_WRITE,     1               # r2 = virtual address, r3 = length; returns the length, or -1

.equ CAUSE_SYSCALL, 1
.equ CAUSE_PRIV,    2
.equ CAUSE_MEM,     4
.equ CAUSE_DIVZERO, 6

start:
        la      sp, stack_top
        la      r2, s_boot
        call    print_str
        la      r4, handler
        mtcr    ivt, r4
        li      r4, USER_BASE           # the user context that iret switches to
        mtcr    ebase, r4
        li      r4, USER_BOUND
        mtcr    ebound, r4
        mtcr    epc, zero               # user pc 0
        mtcr    epsw, zero              # user mode, interrupts off
        iret

# --- the trap handler ------------------------------------------------------------------------------------
handler:
        mtcr    scratch, r1             # free r1, then save everything in `saved`
        la      r1, saved
        st      r2, 8(r1)
        st      r3, 12(r1)
        st      r4, 16(r1)
        st      r5, 20(r1)
        st      r6, 24(r1)
        st      r7, 28(r1)
        st      r8, 32(r1)
        st      r9, 36(r1)
        st      r10, 40(r1)
        st      r11, 44(r1)
        st      r12, 48(r1)
        st      r13, 52(r1)
        st      r14, 56(r1)
        st      r15, 60(r1)
        mfcr    r2, scratch
        st      r2, 4(r1)
        la      sp, stack_top
        mfcr    r10, cause
        mfcr    r11, badaddr
        mfcr    r12, epc
        li      r4, CAUSE_SYSCALL
        beq     r10, r4, on_syscall
        li      r4, CAUSE_MEM
        beq     r10, r4, on_mem
        li      r4, CAUSE_PRIV
        beq     r10, r4, on_priv
        li      r4, CAUSE_DIVZERO
        beq     r10, r4, on_divzero
        la      r2, s_unexpected        # anything else: report it and stop
        call    print_str
        call    print_cause
        li      r1, 1
        halt

on_mem:
        la      r2, s_mem
        call    print_str
        mov     r2, r11
        call    print_hex
        j       report

on_priv:
        la      r2, s_priv
        call    print_str
        mov     r2, r11
        call    print_hex
        j       report

on_divzero:
        la      r2, s_divzero
        call    print_str
report:                                 # " (cause C, pc P)", then skip the faulting instruction
        call    print_cause
        j       skip

print_cause:                            # " (cause C, pc P)\n" from r10 and r12
        push    lr
        la      r2, s_cause
        call    print_str
        mov     r2, r10
        call    print_dec
        la      r2, s_pc
        call    print_str
        mov     r2, r12
        call    print_hex
        la      r2, s_close
        call    print_str
        pop     lr
        ret

on_syscall:
        la      r1, saved
        beqz    r11, sys_exit
        li      r4, SYS_WRITE
        beq     r11, r4, sys_write
        li      r2, -1                  # no such call
        j       sys_return

sys_write:
        ld      r13, 8(r1)              # virtual address
        ld      r3, 12(r1)              # length
        li      r2, -1
        mfcr    r4, ebound              # the whole buffer must lie inside the user's window
        bltu    r4, r3, sys_return
        sub     r4, r4, r3
        bltu    r4, r13, sys_return
        mfcr    r4, ebase               # translate: physical = base + virtual
        add     r13, r13, r4
        add     r11, r13, r3
        la      r2, s_write
        call    print_str
1:      beq     r13, r11, 2f
        ldbu    r4, 0(r13)
        out     0, r4
        addi    r13, r13, 1
        j       1b
2:      la      r1, saved
        ld      r2, 12(r1)              # return the length
sys_return:
        la      r1, saved
        st      r2, 8(r1)
skip:
        addi    r12, r12, 4             # resume after the trapping instruction
        mtcr    epc, r12
        la      r15, saved              # restore the user's registers and return
        FRAME_LOAD_R1_R13 r15
        ld      r14, 56(r15)
        ld      r15, 60(r15)
        iret

sys_exit:
        la      r2, s_exit
        call    print_str
        ld      r2, 8(r1)
        call    print_dec
        call    newline
        la      r1, saved
        ld      r1, 8(r1)               # exit status = the user's r2
        halt

s_boot:         .asciz "trapdemo: kernel starting user program\n"
s_write:        .asciz "syscall write: "
s_exit:         .asciz "syscall exit: status "
s_mem:          .asciz "MEM fault at "
s_priv:         .asciz "PRIV: instruction "
s_divzero:      .asciz "DIVZERO"
s_unexpected:   .asciz "unexpected trap"
s_cause:        .asciz " (cause "
s_pc:           .asciz ", pc "
s_close:        .asciz ")\n"

        .include "lib.s"

        .align  4
saved:  .space  64                      # the user's r0..r15 while the kernel runs
        .space  256
stack_top:

# --- the user program: runs at virtual address 0, so every data address is an offset from user_start ------
        .org    USER_BASE
user_start:
        li      r10, 0x12345678         # values that every trap must preserve
        li      r13, -2
        li      r2, u_hello - user_start
        li      r3, u_hello_end - u_hello
        syscall SYS_WRITE
        mov     r11, r2                 # bytes written
        li      r4, BAD_ADDR
u_bad_load:
        ld      r5, 0(r4)               # MEM: beyond the bound
u_priv:
        mfcr    r2, psw                 # PRIV: a privileged instruction in user mode
        li      r6, 0
u_div:
        div     r7, r10, r6             # DIVZERO
        li      r4, 0x12345678
        bne     r10, r4, 1f
        li      r4, -2
        bne     r13, r4, 1f
        li      r4, u_hello_end - u_hello
        bne     r11, r4, 1f
        li      r2, u_intact - user_start
        li      r3, u_intact_end - u_intact
        syscall SYS_WRITE
        li      r2, EXIT_STATUS
        syscall SYS_EXIT
1:      li      r2, u_clobbered - user_start
        li      r3, u_clobbered_end - u_clobbered
        syscall SYS_WRITE
        li      r2, 99
        syscall SYS_EXIT

u_hello:        .ascii "hello from user mode\n"
u_hello_end:
u_intact:       .ascii "registers intact after every trap\n"
u_intact_end:
u_clobbered:    .ascii "registers clobbered\n"
u_clobbered_end:
