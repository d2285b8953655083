# task.s - the user program every task runs (included by kernel.s between task_image and task_image_end).
#
# The kernel copies it to the start of each task's region and runs it at virtual address 0, so it is
# position-independent: jumps and calls are pc-relative, and data addresses are offsets from task_image
# (`li rX, label - task_image`), never `la`. It prints one line per round, "[pid] counting N", after a
# loop of hashing work long enough to be preempted; task 2 yields and task 3 sleeps after each line.
# Registers: r10 = pid, r11 = round, r12 = last round, r13 = the running hash.

.equ UBUF,          0xC00           # line buffer (virtual); the stack grows down from the region's top
.equ WORK,          200             # hash steps per round, times the pid
.equ HASH_SEED,     5381
.ifndef ROUNDS
.equ ROUNDS,        2               # rounds beyond the pid (-D ROUNDS=n makes a longer run)
.endif

t_start:
    syscall SYS_GETPID
    mov r10, r2
    li r11, 1
    addi r12, r10, ROUNDS           # pid + ROUNDS rounds
    li r13, HASH_SEED
1:  li r4, WORK
    mul r2, r4, r10
    call t_work
    li r3, t_s_counting - task_image
    mov r4, r11
    call t_say
    li r4, 2
    bne r10, r4, 2f
    syscall SYS_YIELD
2:  li r4, 3
    bne r10, r4, 3f
    li r2, SLEEP_TICKS
    syscall SYS_SLEEP
3:  addi r11, r11, 1
    ble r11, r12, 1b
.ifdef CRASH
    li r4, 2                        # task 2 reads just past its bound and is killed
    bne r10, r4, 4f
    li r4, REGION_SIZE
t_crash:
    ld r4, 0(r4)
4:
.endif
    li r3, t_s_done - task_image
    mov r4, r13
    call t_say
    li r2, 0
    syscall SYS_EXIT

t_work:                             # r2 hash steps: r13 = r13 * 33 + i for i = 0 .. r2-1
    li r5, 0
1:  shli r6, r13, 5
    add r13, r13, r6
    add r13, r13, r5
    addi r5, r5, 1
    bltu r5, r2, 1b
    ret

t_say:                              # write the line "[pid] <string at r3><r4 in decimal>" in one call
    push lr
    push r4
    push r3
    li r2, UBUF
    li r3, '['
    stb r3, 0(r2)
    addi r2, r2, 1
    mov r3, r10
    call t_putdec
    li r3, t_s_close - task_image
    call t_puts
    pop r3
    call t_puts
    pop r3
    call t_putdec
    li r3, '\n'
    stb r3, 0(r2)
    addi r2, r2, 1
    li r4, UBUF
    sub r3, r2, r4
    mov r2, r4
    syscall SYS_WRITE
    pop lr
    ret

t_puts:                             # append the string at r3 to the line ending at r2; r2 <- new end
1:  ldbu r4, 0(r3)
    beqz r4, 2f
    stb r4, 0(r2)
    addi r2, r2, 1
    addi r3, r3, 1
    j 1b
2:  ret

t_putdec:                           # append r3 in decimal to the line ending at r2; r2 <- new end
    addi sp, sp, -12
    addi r4, sp, 12
    li r6, 10
1:  remu r5, r3, r6
    addi r5, r5, '0'
    addi r4, r4, -1
    stb r5, 0(r4)
    divu r3, r3, r6
    bnez r3, 1b
    addi r6, sp, 12
2:  ldbu r5, 0(r4)
    stb r5, 0(r2)
    addi r2, r2, 1
    addi r4, r4, 1
    bne r4, r6, 2b
    addi sp, sp, 12
    ret

t_s_close:      .asciz "] "
t_s_counting:   .asciz "counting "
t_s_done:       .asciz "done, hash "
