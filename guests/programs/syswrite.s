# A system-call workload whose kernel does per call what a real kernel does, where syscalls.s answers each
# call in a handful of instructions (it stays as the per-exit nanobenchmark). A user task makes COUNT pairs of
# calls, getpid() and write(buffer, LEN); the kernel saves and restores all the caller's registers and its
# trap state (Linux's pt_regs), checks the call number and dispatches through a table, counts the call,
# checks a write's length and that its buffer lies inside the caller's region, copies the buffer into a
# kernel pipe (a ring of PIPE_SIZE bytes, word by word), and looks for work pending before it returns. At
# the exit call it prints the calls, the bytes written, a hash of the pipe and the sum of the answers, and
# halts with status 0. Written against the kernel's HAL (guests/kernel/hal_*.s): -D PARAVIRT builds it for `pv`.
.ifdef PARAVIRT
        .include "../kernel/hal_pv.s"
.else
        .include "../kernel/hal_native.s"
.endif
        .include "../kernel/frame.s"
        .ifndef COUNT
        .equ    COUNT, 100                      # pairs of calls
        .endif
        .ifndef LEN
        .equ    LEN, 256                        # bytes per write (a multiple of 4)
        .endif
        .equ    USER, 0x2000                    # the user task's region: R = (USER, USIZE)
        .equ    USIZE, 0x1000
        .equ    UBUF, 0x800                     # its buffer (virtual), up to MAX_WRITE bytes
        .equ    MAX_WRITE, 0x800
        .equ    PIPE_SIZE, 0x400                # the kernel pipe (a power of 2)
        .equ    NR_CALLS, 3
        .equ    EFAULT, 14
        .equ    EINVAL, 22
        .equ    ENOSYS, 38
        .equ    PID, 1

        la      sp, kstack_top
        la      r4, entry
        HAL_SET_IVT r4
        li      r4, USER
        HAL_SET_EBASE r4
        li      r4, USIZE
        HAL_SET_EBOUND r4
        HAL_SET_EPC zero
        HAL_SET_EPSW zero                       # user mode, interrupts off
        HAL_ENTER_USER

# --- the trap entry: save the caller's registers and trap state, then dispatch ------------------------------
entry:  HAL_SCRATCH_SAVE r15
        la      r15, frame
        FRAME_SAVE_R1_R14 r15
        HAL_SCRATCH_LOAD r1
        st      r1, 60(r15)
        HAL_GET_EPC r1
        st      r1, 64(r15)
        HAL_GET_EPSW r1
        st      r1, 68(r15)
        la      sp, kstack_top
        HAL_GET_CAUSE r4
        li      r5, 1                           # SYSCALL
        bne     r4, r5, fault
        HAL_GET_BADADDR r4                      # the call number
        la      r6, ncalls
        ld      r7, 0(r6)
        addi    r7, r7, 1
        st      r7, 0(r6)
        li      r5, NR_CALLS
        bgeu    r4, r5, enosys
        shli    r4, r4, 2
        la      r5, calls
        add     r5, r5, r4
        ld      r5, 0(r5)
        ld      r2, 8(r15)                      # the arguments: the caller's r2 and r3
        ld      r3, 12(r15)
        jalr    lr, 0(r5)
        la      r15, frame                      # (lr is r15)
        st      r2, 8(r15)                      # the result: the caller's r2
return: la      r4, pending                     # work to do before returning (none here: one load)
        ld      r4, 0(r4)
        bnez    r4, fault
        ld      r4, 64(r15)
        addi    r4, r4, 4                       # after the syscall instruction
        HAL_SET_EPC r4
        FRAME_LOAD_R1_R13 r15
        ld      r14, 56(r15)
        ld      r15, 60(r15)
        HAL_ENTER_USER
enosys: li      r2, -ENOSYS
        st      r2, 8(r15)
        j       return

# --- the calls: arguments in r2, r3; the result in r2 -------------------------------------------------------
sys_getpid:
        li      r2, PID
        ret

sys_write:                                      # r2 = virtual address, r3 = length (a multiple of 4)
        li      r4, MAX_WRITE
        bltu    r4, r3, 2f                      # too long
        or      r4, r2, r3
        andi    r4, r4, 3
        bnez    r4, 2f                          # not in words
        li      r4, USIZE
        sub     r4, r4, r3
        bltu    r4, r2, 3f                      # not inside the caller's region
        li      r4, USER
        add     r10, r4, r2                     # physical source and its end
        add     r11, r10, r3
        la      r12, pipe
        la      r13, head
        ld      r6, 0(r13)
        beq     r10, r11, 4f
1:      ld      r7, 0(r10)                      # copy from the caller into the pipe
        add     r8, r12, r6
        st      r7, 0(r8)
        addi    r6, r6, 4
        andi    r6, r6, PIPE_SIZE - 1
        addi    r10, r10, 4
        bltu    r10, r11, 1b
4:      st      r6, 0(r13)
        la      r4, nbytes
        ld      r5, 0(r4)
        add     r5, r5, r3
        st      r5, 0(r4)
        mov     r2, r3
        ret
2:      li      r2, -EINVAL
        ret
3:      li      r2, -EFAULT
        ret

sys_exit:                                       # r2 = the sum the task kept: print the totals and halt
        mov     r9, r2
        la      r2, s_calls
        call    puts
        la      r2, ncalls
        ld      r2, 0(r2)
        call    putdec
        la      r2, s_bytes
        call    puts
        la      r2, nbytes
        ld      r2, 0(r2)
        call    putdec
        la      r2, s_hash
        call    puts
        la      r4, pipe                        # the pipe's hash: h = 33 * h + word
        addi    r5, r4, PIPE_SIZE
        li      r2, 5381
1:      ld      r6, 0(r4)
        shli    r7, r2, 5
        add     r2, r2, r7
        add     r2, r2, r6
        addi    r4, r4, 4
        bltu    r4, r5, 1b
        call    putdec
        la      r2, s_sum
        call    puts
        mov     r2, r9
        call    putdec
        li      r2, '\n'
        HAL_PUTC r2
        li      r1, 0
        HAL_HALT
fault:  li      r1, 1
        HAL_HALT

        .include "../kernel/hal_print.s"

s_calls: .asciz "calls "
s_bytes: .asciz ", bytes written "
s_hash:  .asciz ", pipe hash "
s_sum:   .asciz ", sum of the answers "
        .align  4
calls:  .word   sys_exit, sys_write, sys_getpid
ncalls: .word   0
nbytes: .word   0
head:   .word   0
pending: .word  0
frame:  .space  72                              # the caller's registers (r1-r15 at 4*n), epc, epsw
        .space  256
kstack_top:
pipe:   .space  PIPE_SIZE

        .org    USER                            # the user task: runs at virtual 0
        li      r10, COUNT
        li      r9, 0                           # the sum of the answers
1:      syscall 2                               # getpid()
        add     r9, r9, r2
        st      r10, UBUF(zero)                 # something new in the buffer each time
        li      r2, UBUF
        li      r3, LEN
        syscall 1                               # write(UBUF, LEN)
        add     r9, r9, r2
        addi    r10, r10, -1
        bnez    r10, 1b
        mov     r2, r9
        syscall 0                               # exit(sum)
