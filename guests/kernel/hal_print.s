# hal_print.s - puts and putdec on the kernel's HAL (HAL_PUTC), for the system-call guests' kernels, which build
# for the bare machine and, with -D PARAVIRT, for `pv`. Included after the HAL.

puts:                                           # the NUL-terminated string at r2 (clobbers r2, r4)
        ldbu    r4, 0(r2)
        beqz    r4, 1f
        HAL_PUTC r4
        addi    r2, r2, 1
        j       puts
1:      ret

putdec:                                         # r2 in decimal (clobbers r2, r4-r6)
        addi    sp, sp, -12
        addi    r4, sp, 12
        li      r6, 10
1:      remu    r5, r2, r6
        divu    r2, r2, r6
        addi    r5, r5, '0'
        addi    r4, r4, -1
        stb     r5, 0(r4)
        bnez    r2, 1b
        addi    r6, sp, 12
2:      ldbu    r5, 0(r4)
        HAL_PUTC r5
        addi    r4, r4, 1
        bltu    r4, r6, 2b
        addi    sp, sp, 12
        ret
