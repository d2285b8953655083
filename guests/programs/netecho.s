# netecho.s - the smallest network driver: a bare program that echoes COUNT messages back, then halts.
#
# It sets up the card's three rings (docs/devices.md), posts one buffer per receive descriptor and waits in
# wfi with interrupts off: the card's pending interrupt ends the wait without being taken. Each message
# received is sent back from the same buffer with the same port and tag (the doorbell copies it out at
# once), then the buffer is posted again. It prints "echoed N" before halting with status 0.

.ifndef COUNT
.equ COUNT,         3
.endif
.equ RING,          4               # descriptors per ring
.equ BUFSIZE,       1024
.include "../kernel/nic.s"

start:
        la      sp, stack_top
        la      r4, rx_ring
        out     NIC_RX, r4
        la      r4, tx_ring
        out     NIC_TX, r4
        la      r4, urx_ring
        out     NIC_URX, r4
        li      r4, RING
        out     NIC_SIZE, r4
        li      r10, 0                  # r10: receive index
1:      mov     r2, r10                 # post every receive buffer
        call    post
        addi    r10, r10, 1
        slti    r4, r10, RING
        bnez    r4, 1b
        li      r10, 0
        li      r11, 0                  # r11: transmit index
        li      r12, 0                  # r12: messages echoed
        li      r4, 3                   # enable, interrupt on (it ends wfi; IE stays off)
        out     NIC_CTRL, r4
wait:
        li      r4, COUNT
        bgeu    r12, r4, done
        wfi
        in      r4, NIC_STATUS
        out     NIC_STATUS, r4          # acknowledge every event
next:
        la      r5, rx_ring             # r5: the receive descriptor at our index
        shli    r6, r10, 4
        add     r5, r5, r6
        ld      r6, 12(r5)
        li      r7, NIC_OWN
        and     r7, r6, r7
        bnez    r7, wait                # still the card's: nothing more received
        la      r7, tx_ring             # r7: the transmit descriptor at our index
        shli    r8, r11, 4
        add     r7, r7, r8
        ld      r8, 0(r5)
        st      r8, 0(r7)               # same buffer,
        ld      r8, 4(r5)
        st      r8, 4(r7)               # length,
        ld      r8, 8(r5)
        st      r8, 8(r7)               # tag,
        li      r8, 0xFFFF
        and     r8, r6, r8
        li      r9, NIC_OWN
        or      r8, r8, r9
        st      r8, 12(r7)              # and port, handed to the card
        out     NIC_DOORBELL, r0
        addi    r11, r11, 1
        andi    r11, r11, RING - 1
        mov     r2, r10
        call    post
        addi    r10, r10, 1
        andi    r10, r10, RING - 1
        addi    r12, r12, 1
        j       next
done:
        la      r2, s_echoed
        call    print_str
        mov     r2, r12
        call    print_dec
        li      r4, '\n'
        out     0, r4
        li      r1, 0
        halt

# post: give receive descriptor r2 back to the card with its own buffer.
post:
        la      r4, rx_ring
        shli    r5, r2, 4
        add     r4, r4, r5
        li      r5, BUFSIZE
        mul     r6, r2, r5
        la      r7, buffers
        add     r6, r6, r7
        st      r6, 0(r4)
        st      r5, 4(r4)
        st      r0, 8(r4)
        li      r5, NIC_OWN
        st      r5, 12(r4)
        ret

s_echoed: .asciz "echoed "

        .include "lib.s"
        .align  16
rx_ring:  .space RING * 16
tx_ring:  .space RING * 16
urx_ring: .space RING * 16
buffers:  .space RING * BUFSIZE
        .space  256
stack_top:
