# A hostile guest that spins forever with interrupts off. On a shared host it must not stop the others.
        li      r1, 0
1:      addi    r1, r1, 1
        j       1b
