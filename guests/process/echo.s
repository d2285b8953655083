# echo.s - a process that uses the calls only the process VM serves: it reads its console input, writes it
# back in upper case, and reports how many instructions that took.
#   popek run --process guests/process/echo.s --input 'hello, process'

.include "abi.s"
.equ BUF,           0x800           # input buffer
.equ BUFSIZE,       256

start:
1:  li r2, BUF
    li r3, BUFSIZE
    syscall SYS_READ
    beqz r2, 3f                     # no more input
    mov r3, r2
    li r4, BUF
    add r5, r4, r3
2:  ldbu r6, 0(r4)                  # upper-case a..z in place
    slti r7, r6, 'a'
    bnez r7, 4f
    slti r7, r6, 'z' + 1
    beqz r7, 4f
    addi r6, r6, 'A' - 'a'
    stb r6, 0(r4)
4:  addi r4, r4, 1
    bltu r4, r5, 2b
    li r2, BUF
    syscall SYS_WRITE
    j 1b
3:  la r2, newline
    li r3, 1
    syscall SYS_WRITE
    syscall SYS_CLOCK               # r2: the instructions this run took
    mov r8, r2
    la r2, s_took                   # "took N instructions"
    li r3, s_took_end - s_took
    syscall SYS_WRITE
    mov r2, r8
    call putdec
    la r2, s_insns
    li r3, s_insns_end - s_insns
    syscall SYS_WRITE
    li r2, 0
    syscall SYS_EXIT

putdec:                             # write r2 in decimal
    li r4, BUF + BUFSIZE + 16       # digits, from the end backwards
    mov r5, r4
    li r6, 10
1:  remu r7, r2, r6
    addi r7, r7, '0'
    addi r4, r4, -1
    stb r7, 0(r4)
    divu r2, r2, r6
    bnez r2, 1b
    mov r2, r4
    sub r3, r5, r4
    syscall SYS_WRITE
    ret

newline:    .ascii "\n"
s_took:     .ascii "took "
s_took_end:
s_insns:    .ascii " instructions\n"
s_insns_end:
