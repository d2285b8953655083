# net.s - the server build's network subsystem (kernel.s includes it with -D SERVER; README.md here and
# guests/servers/README.md describe it): the network card's driver, ports and names, the system calls that
# serve requests, and the urgent control channel.
#
# Every access to the card goes through the HAL (HAL_NET_SETUP, HAL_NET_NOTIFY, HAL_NET_ACK), so the same
# code drives it by port I/O (hal_native.s) and through the paravirtual monitor's hypercalls (hal_pv.s); the
# rings and their descriptors (docs/devices.md) are the same either way.
#
# The driver keeps receive buffers apart from descriptors: a message the card placed is taken out of the ring
# at once (the buffer joins the held queue) and the descriptor gets a free buffer, so a busy service never
# stops the card from delivering to the others. Held messages go to the task bound to their port when it waits
# in recv. Replies are copied to transmit buffers and the card is notified once per batch: before the kernel
# idles, at each tick (so a reply waits at most a quantum behind a long request), or when the ring is full.
#
# Conventions: r13 is the current TCB and sp the kernel stack, both preserved by every function here; any
# other register may change across a call. Kernel addresses are guest-physical; a task's virtual address va
# is at TCB_BASE + va and is checked against TCB_BOUND first.

.equ D_ADDR,        0               # a descriptor's words (docs/devices.md)
.equ D_LEN,         4
.equ D_TAG,         8
.equ D_CTL,         12
.equ D_OWN_HI,      0x8000          # lui of ctl's OWN bit (bit 31: a descriptor the card owns reads negative)
.equ D_ERR_HI,      0x2000          # lui of ctl's ERR bit
.equ BIND_MAX,      16              # bindings: port, TCB, flags
.equ BIND_SIZE,     12
.equ NAME_MAX,      16              # names: 16 bytes (NUL-padded, at most 15 used), port
.equ NAME_SIZE,     20
.equ BIG_WANTED,    1               # rx_big: the big buffer is wanted by a long message, or posted
.equ BIG_POSTED,    2

.macro LDV rd, sym                  # rd <- the kernel word at sym
    la \rd, \sym
    ld \rd, 0(\rd)
.endm
.macro STV rs, sym, tmp             # the kernel word at sym <- rs (clobbers tmp)
    la \tmp, \sym
    st \rs, 0(\tmp)
.endm
.macro INDEX rd, base, idx, shift   # rd <- base + (idx << shift)
    la \rd, \base
    shli \idx, \idx, \shift
    add \rd, \rd, \idx
.endm

# --- boot --------------------------------------------------------------------------------------------------
server_boot:                        # load the service program into each task's region, start the card, run
    li r4, 1
    STV r4, booting, r5
    la r10, tasks
    la r11, task_table
    li r12, REGION0
1:  st r12, TCB_BASE(r10)
    ld r4, 0(r11)                   # the region's size: the task's bound, and where its stack starts
    st r4, TCB_BOUND(r10)
    st r4, TCB_SP(r10)
    ld r5, 4(r11)                   # its role, in r2 when it starts
    st r5, 8(r10)
    li r5, READY
    st r5, TCB_STATE(r10)
    la r5, task_image
    la r6, task_image_end
    mov r7, r12
2:  ld r8, 0(r5)
    st r8, 0(r7)
    addi r5, r5, 4
    addi r7, r7, 4
    bltu r5, r6, 2b
    add r12, r12, r4
    addi r10, r10, TCB_SIZE
    addi r11, r11, 8
    la r5, tasks_end
    bltu r10, r5, 1b
    STV zero, booting, r5
    call net_init
    la r13, tasks
    j switch_to

server_panic_hint:                  # a fault while the boot loads the tasks: the memory is too small for them
    LDV r4, booting
    beqz r4, 1f
    la r2, s_nomem
    j kputs
1:  ret

task_table:                         # region size, role
.ifdef CONCURRENT
  .if HAS_POOL
    .word REGION_POOL, ROLE_POOL1
    .word REGION_POOL, ROLE_POOL2
  .endif
  .if HAS_KV
    .word REGION_KV, ROLE_KV
  .endif
  .if HAS_SESSION
    .word REGION_SESSION, ROLE_SESSION
  .endif
    .word REGION_SMALL, ROLE_DISPATCHER   # last: the workers have registered when it looks them up
.else
    .word REGION_ITERATIVE, ROLE_ITERATIVE
.endif

net_init:                           # free buffers, post every descriptor, start the card (or halt)
    push lr
    la r4, free_list
    li r5, 0
    li r6, RX_COUNT
1:  st r5, 0(r4)
    addi r4, r4, 4
    addi r5, r5, 1
    bltu r5, r6, 1b
    STV r6, free_count, r4
    li r9, 0
2:  mov r2, r9
    call urx_post
    addi r9, r9, 1
    li r4, NIC_N
    bltu r9, r4, 2b
    call net_refill
    la r4, net_block
    HAL_NET_SETUP r4, r5
    bnez r5, 3f
    pop lr
    ret
3:  la r2, s_nonic
    call kputs
    li r1, 1
    HAL_HALT

urx_post:                           # post urgent descriptor r2 with its own buffer (clobbers r4-r6)
    li r5, UBUFS
    shli r4, r2, UMSG_SHIFT
    add r5, r5, r4
    INDEX r4, urx_ring, r2, 4
    st r5, D_ADDR(r4)
    li r5, UMSG_MAX
    st r5, D_LEN(r4)
    st zero, D_TAG(r4)
    lui r5, D_OWN_HI
    st r5, D_CTL(r4)
    ret

net_refill:                         # give free receive buffers to the descriptors after the posted ones
    LDV r4, rx_posted               # (clobbers r4-r11)
    li r5, NIC_N
    bgeu r4, r5, 9f
    LDV r6, rx_big
    li r7, BIG_WANTED
    bne r6, r7, 1f
    li r6, BIG_POSTED               # a message too long for the pool waits at the card: the big buffer goes
    STV r6, rx_big, r7              # next, where the card (walking on over the descriptors it marks ERR)
    li r8, RX_COUNT                 # will find it; RX_COUNT stands for it
    li r10, BIGBUF
    li r11, NIC_MTU
    j 2f
1:  LDV r6, free_count
    beqz r6, 9f
    addi r6, r6, -1
    STV r6, free_count, r7
    INDEX r7, free_list, r6, 2
    ld r8, 0(r7)                    # r8: the buffer
    shli r10, r8, MSG_SHIFT
    li r11, RXBUFS
    add r10, r10, r11               # r10, r11: its address and size
    li r11, MSG_MAX
2:  LDV r9, rx_next
    add r9, r9, r4
    andi r9, r9, NIC_N - 1          # r9: the descriptor
    addi r4, r4, 1
    STV r4, rx_posted, r7
    mov r6, r9
    INDEX r7, rx_desc_buf, r6, 2
    st r8, 0(r7)
    INDEX r7, rx_ring, r9, 4
    st r10, D_ADDR(r7)
    st r11, D_LEN(r7)
    st zero, D_TAG(r7)
    lui r10, D_OWN_HI
    st r10, D_CTL(r7)
    li r9, RX_COUNT
    bne r8, r9, net_refill
    HAL_NET_NOTIFY r9               # the card looks again now, for the long message
    j net_refill
9:  ret

# --- taking what the card delivered ------------------------------------------------------------------------
net_poll:                           # the device interrupt or a wake-up: acknowledge, then look at every ring
    HAL_NET_ACK r4
net_scan:                           # (a tick looks without acknowledging: the interrupt, if any, comes next)
    push lr
    call net_urgent                 # the urgent channel first
    call net_reap
    call net_deliver
    pop lr
    ret

net_urgent:                         # serve every urgent message the card placed, in order
    push lr
1:  LDV r9, urx_next
    INDEX r11, urx_ring, r9, 4
    ld r5, D_CTL(r11)
    blt r5, zero, 9f                # still the card's
    ld r2, D_ADDR(r11)
    li r7, UBIGBUF
    bne r2, r7, 2f
    STV zero, urx_big, r7           # the urgent big buffer comes back (with the long message, or an error)
2:  lui r6, D_ERR_HI
    and r6, r5, r6
    bnez r6, 5f
    ld r3, D_LEN(r11)
    ld r4, D_TAG(r11)
    andi r5, r5, 0xFFFF
    call urgent_command              # (a long message is no command: it gets an error reply)
4:  LDV r9, urx_next
    mov r2, r9
    call urx_post
    addi r9, r9, 1
    andi r9, r9, NIC_N - 1
    STV r9, urx_next, r4
    j 1b
5:  LDV r6, urx_big                 # too long for its buffer: the card moved on, the message waits for the
    bnez r6, 4b                     # next descriptor; this one takes the big buffer, if that is free
    li r6, 1
    STV r6, urx_big, r7
    li r7, UBIGBUF
    st r7, D_ADDR(r11)
    li r7, NIC_MTU
    st r7, D_LEN(r11)
    lui r7, D_OWN_HI
    st r7, D_CTL(r11)
    HAL_NET_NOTIFY r7
    LDV r9, urx_next
    addi r9, r9, 1
    andi r9, r9, NIC_N - 1
    STV r9, urx_next, r4
    j 1b
9:  pop lr
    ret

net_reap:                           # move the messages the receive ring holds to the held queue
    push lr
1:  LDV r4, rx_posted
    beqz r4, 9f
    LDV r9, rx_next
    INDEX r11, rx_ring, r9, 4
    ld r5, D_CTL(r11)
    blt r5, zero, 9f                # still the card's
    LDV r9, rx_next
    INDEX r7, rx_desc_buf, r9, 2
    ld r12, 0(r7)                   # r12: the descriptor's buffer (RX_COUNT: the big one)
    lui r6, D_ERR_HI
    and r6, r5, r6
    beqz r6, 2f
    li r7, RX_COUNT                 # too long for the buffer: the card moved on and the message waits for the
    bne r12, r7, 3f                 # next descriptor; the refill posts the big buffer (unless it is out)
    STV zero, rx_big, r7
3:  LDV r6, rx_big
    bnez r6, 4f
    li r6, BIG_WANTED
    STV r6, rx_big, r7
4:  li r7, RX_COUNT
    beq r12, r7, 6f
    mov r2, r12
    call buf_free
    j 6f
2:  ld r6, D_LEN(r11)
    ld r7, D_TAG(r11)
    andi r5, r5, 0xFFFF
    li r8, RX_COUNT
    beq r12, r8, 5f                 # it came in the big buffer: too long for a service
    mov r8, r12
    INDEX r4, msg_len, r8, 2
    st r6, 0(r4)
    mov r8, r12
    INDEX r4, msg_tag, r8, 2
    st r7, 0(r4)
    mov r8, r12
    INDEX r4, msg_port, r8, 2
    st r5, 0(r4)
    LDV r6, held_count
    addi r7, r6, 1
    STV r7, held_count, r4
    INDEX r4, held, r6, 2
    st r12, 0(r4)
    j 6f
5:  STV zero, rx_big, r8
    mov r2, r7
    mov r3, r5
    la r4, s_toolong
    call reply_text
6:  LDV r9, rx_next                 # the descriptor is the driver's again, without a buffer
    addi r9, r9, 1
    andi r9, r9, NIC_N - 1
    STV r9, rx_next, r4
    LDV r4, rx_posted
    addi r4, r4, -1
    STV r4, rx_posted, r5
    j 1b
9:  call net_refill
    pop lr
    ret

buf_free:                           # receive buffer r2 is free again (clobbers r4-r6)
    LDV r4, free_count
    addi r5, r4, 1
    STV r5, free_count, r6
    INDEX r5, free_list, r4, 2
    st r2, 0(r5)
    ret

held_remove:                        # drop held message r2 (its index in the queue) and free its buffer
    push lr
    LDV r6, held_count
    addi r6, r6, -1
    STV r6, held_count, r4
    INDEX r7, held, r2, 2           # r7: its slot; the later ones move down one
    ld r2, 0(r7)
    INDEX r8, held, r6, 2           # r8: the old last slot
1:  bgeu r7, r8, 2f
    ld r4, 4(r7)
    st r4, 0(r7)
    addi r7, r7, 4
    j 1b
2:  call buf_free
    pop lr
    ret

.macro HELD_MSG b, tmp              # b <- the buffer of held message k, the word at 4(sp) (clobbers tmp)
    ld \tmp, 4(sp)
    INDEX \b, held, \tmp, 2
    ld \b, 0(\b)
.endm

net_deliver:                        # give each held message to its port's task if that task waits in recv
    addi sp, sp, -8
    st lr, 0(sp)
    st zero, 4(sp)                  # 4(sp): k, the held message looked at
1:  ld r10, 4(sp)
    LDV r4, held_count
    bgeu r10, r4, 9f
    HELD_MSG r12, r4
    la r5, msg_port
    shli r11, r12, 2
    add r11, r11, r5
    ld r11, 0(r11)                  # r11: its port
    li r5, NAMES_PORT
    bne r11, r5, 2f
    mov r2, r12
    call names_serve
    j 7f
2:  mov r2, r11
    call bind_find
    bnez r2, 3f
    HELD_MSG r12, r4                # nobody serves that port: say so, drop it
    la r4, msg_tag
    shli r5, r12, 2
    add r4, r4, r5
    ld r2, 0(r4)
    mov r3, r11
    la r4, s_noport
    call reply_text
    j 7f
3:  ld r3, 4(r2)                    # r3: the TCB bound to the port
    ld r4, TCB_STATE(r3)
    li r5, RECEIVING
    beq r4, r5, 4f
    ld r10, 4(sp)                   # its task is busy: the message waits
    addi r10, r10, 1
    st r10, 4(sp)
    j 1b
4:  ld r7, 8(r2)                    # the binding's flags go with the request
    mov r2, r3
    HELD_MSG r12, r4
    shli r3, r12, MSG_SHIFT
    li r4, RXBUFS
    add r3, r3, r4
    shli r8, r12, 2
    la r4, msg_len
    add r4, r4, r8
    ld r4, 0(r4)
    la r5, msg_tag
    add r5, r5, r8
    ld r5, 0(r5)
    mov r6, r11
    call deliver_to
7:  ld r2, 4(sp)
    call held_remove
    j 1b
9:  call net_refill
    ld lr, 0(sp)
    addi sp, sp, 8
    ret

deliver_to:                         # give task r2 (waiting in recv) the request: payload r3 (physical),
    addi sp, sp, -32                # length r4, tag r5, port r6, flags r7; it becomes ready with r2 = length
    st lr, 0(sp)
    st r2, 4(sp)
    st r4, 12(sp)
    st r5, 16(sp)
    st r6, 20(sp)
    st r7, 24(sp)
    ld r8, TCB_BASE(r2)
    ld r9, TCB_RBUF(r2)
    add r8, r8, r9                  # r8: the task's buffer, checked by recv
    st r5, HDR_TAG(r8)
    st r6, HDR_PORT(r8)
    st r4, HDR_LEN(r8)
    ld r9, TCB_RCAP(r2)
    li r10, 0
    bgeu r9, r4, 1f
    li r10, MSG_TRUNC
    mov r4, r9                      # copy what fits
1:  st r10, HDR_FLAGS(r8)
    addi r2, r8, HDR_SIZE
    call umemcpy
    ld r2, 4(sp)
    ld r4, 12(sp)
    st r4, 8(r2)                    # recv returns the length
    ld r4, 16(sp)
    st r4, TCB_TAG(r2)
    ld r4, 20(sp)
    st r4, TCB_PORT(r2)
    ld r4, 24(sp)
    st r4, TCB_FLAGS(r2)
    li r4, READY
    st r4, TCB_STATE(r2)
    ld lr, 0(sp)
    addi sp, sp, 32
    ret

# --- sending -------------------------------------------------------------------------------------------------
tx_send:                            # queue a message: tag r2, port r3, r5 bytes at r4 (physical); r2 <- 0 or -1
    addi sp, sp, -20
    st lr, 0(sp)
    st r2, 4(sp)
    st r3, 8(sp)
    st r4, 12(sp)
    st r5, 16(sp)
    LDV r9, tx_next
    INDEX r10, tx_ring, r9, 4
    ld r6, D_CTL(r10)
    bge r6, zero, 1f
    call net_flush                  # the ring is full: send what it holds
    LDV r9, tx_next
    INDEX r10, tx_ring, r9, 4
    ld r6, D_CTL(r10)
    blt r6, zero, 8f                # the card did not take them: drop this one
1:  LDV r2, tx_next
    shli r2, r2, MSG_SHIFT
    li r6, TXBUFS
    add r2, r2, r6
    ld r3, 12(sp)
    ld r4, 16(sp)
    call umemcpy
    LDV r9, tx_next
    mov r6, r9
    INDEX r10, tx_ring, r6, 4
    shli r6, r9, MSG_SHIFT
    li r7, TXBUFS
    add r6, r6, r7
    st r6, D_ADDR(r10)
    ld r6, 16(sp)
    st r6, D_LEN(r10)
    ld r6, 4(sp)
    st r6, D_TAG(r10)
    ld r6, 8(sp)
    andi r6, r6, 0xFFFF
    lui r7, D_OWN_HI
    or r6, r6, r7
    st r6, D_CTL(r10)
    addi r9, r9, 1
    andi r9, r9, NIC_N - 1
    STV r9, tx_next, r7
    LDV r6, tx_pending
    addi r6, r6, 1
    STV r6, tx_pending, r7
    li r7, NIC_N
    bltu r6, r7, 2f
    call net_flush
2:  li r2, 0
    j 9f
8:  li r2, -1
9:  ld lr, 0(sp)
    addi sp, sp, 20
    ret

net_flush:                          # one notification for every message queued since the last (clobbers r4, r5)
    la r4, tx_pending
    ld r5, 0(r4)
    beqz r5, 1f
    st zero, 0(r4)
    HAL_NET_NOTIFY r5
1:  ret

reply_text:                         # send the NUL-terminated string r4 as tag r2's reply from port r3
    mov r6, r2
    mov r5, r4
1:  ldbu r7, 0(r5)
    beqz r7, 2f
    addi r5, r5, 1
    j 1b
2:  sub r5, r5, r4
    mov r2, r6
    j tx_send                       # tail call

# --- ports and names ---------------------------------------------------------------------------------------
bind_find:                          # r2 <- the binding of port r2, or 0 (clobbers r4-r6)
    la r4, bindings
    la r5, bindings_end
1:  ld r6, 0(r4)
    beq r6, r2, 2f
    addi r4, r4, BIND_SIZE
    bltu r4, r5, 1b
    li r2, 0
    ret
2:  mov r2, r4
    ret

user_name:                          # the task's name at va r2: r2 <- physical address and r3 <- its length
    ld r4, TCB_BOUND(r13)           # (1-15), or r2 <- 0 when it does not end in time inside the region
    ld r5, TCB_BASE(r13)
    bgeu r2, r4, 3f
    li r3, 0
1:  add r6, r2, r3
    bgeu r6, r4, 3f
    add r6, r6, r5
    ldbu r6, 0(r6)
    beqz r6, 2f
    addi r3, r3, 1
    li r6, NAME_MAX
    bltu r3, r6, 1b
    j 3f
2:  beqz r3, 3f
    add r2, r2, r5
    ret
3:  li r2, 0
    ret

name_find:                          # r2 <- the entry named by the r3 bytes at r2, or 0 (clobbers r4-r9)
    la r4, names
    la r5, names_end
1:  ldbu r6, 0(r4)
    beqz r6, 4f                     # an empty entry
    li r6, 0
2:  add r7, r4, r6                  # compare byte r6
    ldbu r8, 0(r7)
    add r9, r2, r6
    ldbu r9, 0(r9)
    bne r8, r9, 4f
    addi r6, r6, 1
    bltu r6, r3, 2b
    add r7, r4, r3
    ldbu r8, 0(r7)
    bnez r8, 4f                     # the entry's name is longer
    mov r2, r4
    ret
4:  addi r4, r4, NAME_SIZE
    bltu r4, r5, 1b
    li r2, 0
    ret

names_serve:                        # the kernel's names service: held message r2 names a service; reply with
    addi sp, sp, -8                 # its port in decimal, or an error
    st lr, 0(sp)
    st r2, 4(sp)
    shli r4, r2, 2
    la r5, msg_len
    add r5, r5, r4
    ld r3, 0(r5)
    beqz r3, 2f
    li r5, NAME_MAX
    bgeu r3, r5, 2f
    shli r2, r2, MSG_SHIFT
    li r5, RXBUFS
    add r2, r2, r5
    call name_find
    beqz r2, 2f
    ld r3, 16(r2)
    la r2, ktext
    call fmt_dec
    la r4, ktext
    sub r5, r2, r4
    call names_tag
    call tx_send
    j 3f
2:  call names_tag
    la r4, s_notfound
    call reply_text
3:  ld lr, 0(sp)
    addi sp, sp, 8
    ret
names_tag:                          # r2 <- the tag of the held message at 4(sp) of the caller, r3 <- NAMES_PORT
    ld r2, 4(sp)                    # (a leaf: sp is the caller's)
    shli r2, r2, 2
    la r3, msg_tag
    add r2, r2, r3
    ld r2, 0(r2)
    li r3, NAMES_PORT
    ret

# --- system calls (r4 = number >= SYS_BIND, r2 and r3 = the task's arguments) --------------------------------
net_syscall:
    li r5, SYS_LAST
    bltu r5, r4, sys_refused
    addi r4, r4, -SYS_BIND
    shli r4, r4, 2
    la r5, net_calls
    add r5, r5, r4
    ld r5, 0(r5)
    jalr zero, 0(r5)
sys_refused:
    li r2, -1
    j return_r2
net_calls:  .word sys_bind, sys_recv, sys_reply, sys_register, sys_lookup, sys_forward

sys_bind:                           # r2 = port, r3 = flags
    beqz r2, sys_refused
    li r4, 0xFFFF
    bltu r4, r2, sys_refused
    li r4, NAMES_PORT
    beq r2, r4, sys_refused
    mov r10, r2
    andi r11, r3, BIND_CANCEL
    call bind_find
    bnez r2, sys_refused            # bound already
    li r2, 0
    call bind_find                  # a free entry
    beqz r2, sys_refused
    st r10, 0(r2)
    st r13, 4(r2)
    st r11, 8(r2)
    li r2, 0
    j return_r2

sys_recv:                           # r2 = buffer (word aligned), r3 = capacity
    andi r4, r2, 3
    bnez r4, sys_refused
    ld r4, TCB_BOUND(r13)
    li r5, HDR_SIZE
    bltu r4, r5, sys_refused
    sub r4, r4, r5
    bltu r4, r3, sys_refused        # capacity > bound - header
    sub r4, r4, r3
    bltu r4, r2, sys_refused        # buffer > bound - header - capacity
    st r2, TCB_RBUF(r13)
    st r2, TCB_R2(r13)
    st r3, TCB_RCAP(r13)
    st r3, TCB_R3(r13)
    ld r4, TCB_PC(r13)
    addi r4, r4, -4                 # the syscall itself: a cancelled request restarts here
    st r4, TCB_RPC(r13)
    ld r4, TCB_SP(r13)
    st r4, TCB_RSP(r13)
    ld r2, TCB_TAG(r13)
    beqz r2, 1f
    ld r3, TCB_PORT(r13)            # the task left its request unanswered: answer for it
    la r4, s_noreply
    call reply_text
    st zero, TCB_TAG(r13)
1:  li r4, RECEIVING
    st r4, TCB_STATE(r13)
    call net_deliver
    ld r4, TCB_STATE(r13)
    li r5, READY
    beq r4, r5, resume              # a message was waiting: go on at once
    j schedule                      # (its replies go with the next batch: at idle, at a tick, ring full)

sys_reply:                          # r2 = tag, r3 = buffer, r4 = length
    ld r4, 16(r13)
    ld r5, TCB_TAG(r13)
    beqz r5, sys_refused
    bne r2, r5, sys_refused         # only the request the task serves, once
    li r5, MSG_MAX
    bltu r5, r4, sys_refused
    ld r5, TCB_BOUND(r13)
    bltu r5, r4, sys_refused
    sub r5, r5, r4
    bltu r5, r3, sys_refused
    ld r5, TCB_BASE(r13)
    add r6, r5, r3
    mov r5, r4
    mov r4, r6
    ld r3, TCB_PORT(r13)
    st zero, TCB_TAG(r13)
    call tx_send
    j return_r2

sys_register:                       # r2 = name, r3 = port (0: a dynamic one)
    li r4, 0xFFFF
    bltu r4, r3, sys_refused
    mov r10, r3
    call user_name
    beqz r2, sys_refused
    mov r11, r2
    mov r12, r3
    call name_find
    bnez r2, sys_refused            # taken
    la r4, names                    # a free entry
    la r5, names_end
1:  ldbu r6, 0(r4)
    beqz r6, 2f
    addi r4, r4, NAME_SIZE
    bltu r4, r5, 1b
    j sys_refused
2:  li r6, 0                        # copy the name; the rest of the entry is zero already
3:  add r7, r11, r6
    ldbu r7, 0(r7)
    add r8, r4, r6
    stb r7, 0(r8)
    addi r6, r6, 1
    bltu r6, r12, 3b
    bnez r10, 4f
    LDV r10, next_dynamic
    addi r6, r10, 1
    STV r6, next_dynamic, r7
4:  st r10, 16(r4)
    mov r2, r10
    j return_r2

sys_lookup:                         # r2 = name
    call user_name
    beqz r2, sys_refused
    call name_find
    beqz r2, sys_refused
    ld r2, 16(r2)
    j return_r2

sys_forward:                        # r2 = port, r3 = the request (header and payload) in the task's memory
    ld r4, TCB_TAG(r13)
    beqz r4, sys_refused            # the task serves no request
    andi r4, r3, 3
    bnez r4, sys_refused
    ld r4, TCB_BOUND(r13)
    li r5, HDR_SIZE
    bltu r4, r5, sys_refused
    sub r4, r4, r5
    bltu r4, r3, sys_refused        # the header lies inside the region
    ld r5, TCB_BASE(r13)
    add r10, r5, r3                 # r10: the header (physical)
    ld r11, HDR_LEN(r10)
    li r5, MSG_MAX
    bltu r5, r11, sys_refused
    sub r4, r4, r3
    bltu r4, r11, sys_refused       # and so does the payload
    call bind_find
    beqz r2, sys_refused
    ld r12, 4(r2)                   # r12: the task there
    beq r12, r13, sys_refused
    ld r4, TCB_STATE(r12)
    li r5, RECEIVING
    bne r4, r5, sys_refused         # busy
    ld r7, TCB_FLAGS(r13)           # the request keeps its tag, port and flags: it moves, it is not copied
    ld r6, TCB_PORT(r13)
    ld r5, TCB_TAG(r13)
    mov r4, r11
    addi r3, r10, HDR_SIZE
    mov r2, r12
    call deliver_to
    st zero, TCB_TAG(r13)
    li r2, 0
    j return_r2

net_task_gone:                      # task r13 exits or is killed: unbind its ports, answer its request
    push lr
    la r4, bindings
    la r5, bindings_end
1:  ld r6, 4(r4)
    bne r6, r13, 2f
    st zero, 0(r4)
    st zero, 4(r4)
2:  addi r4, r4, BIND_SIZE
    bltu r4, r5, 1b
    ld r2, TCB_TAG(r13)
    beqz r2, 3f
    ld r3, TCB_PORT(r13)
    la r4, s_failed
    call reply_text
    st zero, TCB_TAG(r13)
3:  pop lr
    ret

# --- the urgent channel: the kernel serves it itself, before anything else ------------------------------------
urgent_command:                     # payload r2 (physical), length r3, tag r4, port r5
    addi sp, sp, -16
    st lr, 0(sp)
    st r4, 4(sp)
    st r5, 8(sp)
    st r2, 12(sp)
    li r6, 6
    bne r3, r6, 1f
    la r3, s_status
    li r4, 6
    call umemeq
    bnez r2, cmd_status
    j cmd_unknown
1:  li r6, 8
    bltu r3, r6, cmd_unknown
    li r6, 17
    bltu r6, r3, cmd_unknown        # "cancel " and at most 10 digits
    addi r10, r3, -7                # r10: digits
    la r3, s_cancel
    li r4, 7
    call umemeq
    beqz r2, cmd_unknown
    ld r4, 12(sp)
    addi r4, r4, 7
    add r10, r10, r4                # r10: the end of the digits
    li r11, 0                       # r11: the tag
2:  ldbu r5, 0(r4)
    addi r5, r5, -'0'
    li r6, 10
    bgeu r5, r6, cmd_unknown
    mul r11, r11, r6
    add r11, r11, r5
    addi r4, r4, 1
    bltu r4, r10, 2b
    beqz r11, cmd_unknown_request
    li r10, 0                       # a queued request: drop it
3:  LDV r4, held_count
    bgeu r10, r4, 5f
    mov r5, r10
    INDEX r4, held, r5, 2
    ld r4, 0(r4)
    shli r4, r4, 2
    la r5, msg_tag
    add r5, r5, r4
    ld r6, 0(r5)
    bne r6, r11, 4f
    la r5, msg_port
    add r5, r5, r4
    ld r3, 0(r5)
    mov r2, r11
    push r10
    la r4, s_cancelled
    call reply_text
    pop r2
    call held_remove
    j cmd_ok
4:  addi r10, r10, 1
    j 3b
5:  la r12, tasks                   # a request in progress
    la r10, tasks_end
6:  ld r4, TCB_TAG(r12)
    beq r4, r11, 7f
    addi r12, r12, TCB_SIZE
    bltu r12, r10, 6b
    j cmd_unknown_request
7:  ld r4, TCB_FLAGS(r12)
    andi r4, r4, BIND_CANCEL
    beqz r4, cmd_not_cancellable
    mov r2, r11
    ld r3, TCB_PORT(r12)
    la r4, s_cancelled
    call reply_text
    st zero, TCB_TAG(r12)           # the task restarts in its last recv
    ld r4, TCB_RPC(r12)
    st r4, TCB_PC(r12)
    ld r4, TCB_RSP(r12)
    st r4, TCB_SP(r12)
    ld r4, TCB_R2(r12)
    st r4, 8(r12)
    ld r4, TCB_R3(r12)
    st r4, 12(r12)
    li r4, READY
    st r4, TCB_STATE(r12)
cmd_ok:
    la r4, s_ok
    j cmd_reply
cmd_unknown_request:
    la r4, s_unknown_request
    j cmd_reply
cmd_not_cancellable:
    la r4, s_not_cancellable
    j cmd_reply
cmd_unknown:
    la r4, s_unknown_command
cmd_reply:
    ld r2, 4(sp)
    ld r3, 8(sp)
    call reply_text
    ld lr, 0(sp)
    addi sp, sp, 16
    ret

cmd_status:                         # "in progress: <tags of the requests tasks serve>; queued: <held>"
    la r2, ktext
    la r4, s_in_progress
    call kstrcpy
    la r12, tasks
1:  ld r3, TCB_TAG(r12)
    beqz r3, 2f
    li r4, ' '
    stb r4, 0(r2)
    addi r2, r2, 1
    call fmt_dec
2:  addi r12, r12, TCB_SIZE
    la r4, tasks_end
    bltu r12, r4, 1b
    la r4, s_queued
    call kstrcpy
    LDV r3, held_count
    call fmt_dec
    la r4, ktext
    sub r5, r2, r4
    ld r2, 4(sp)
    ld r3, 8(sp)
    call tx_send
    ld lr, 0(sp)
    addi sp, sp, 16
    ret

# --- idle and the device interrupt ----------------------------------------------------------------------------
server_idle:                        # nobody is ready: send what is queued, wait for the card (and the timer
    call net_flush                  # only if somebody sleeps), then look at the rings
    li r4, 0
    la r5, tasks
    la r6, tasks_end
    li r7, SLEEPING
1:  ld r8, TCB_STATE(r5)
    bne r8, r7, 2f
    li r4, QUANTUM
2:  addi r5, r5, TCB_SIZE
    bltu r5, r6, 1b
    STV r4, idle_armed, r5
    HAL_TIMER_SET r4
    HAL_WFI
    call net_poll
    LDV r4, idle_armed
    beqz r4, 3f
    LDV r5, idle_ticks
    addi r5, r5, 1
    STV r5, idle_ticks, r6
    call tick
3:  j schedule

on_device:                          # the card has something: take it, and let a task it readied run
    call net_poll
    j schedule

on_tick_net:                        # each tick: send what is queued, look at the rings (nothing is lost if an
    push lr                         # interrupt was missed), then schedule
    call net_flush
    call net_scan
    pop lr
    ret

# --- small helpers (and lib.s: umemcpy, umemeq, fmt_dec, which the kernel calls in its own image) ---------------
kstrcpy:                            # copy the string r4 (without its NUL) to r2; r2 <- its end
1:  ldbu r5, 0(r4)
    beqz r5, 2f
    stb r5, 0(r2)
    addi r2, r2, 1
    addi r4, r4, 1
    j 1b
2:  ret

# --- data ---------------------------------------------------------------------------------------------------
s_nonic:            .asciz "[kernel] the network card did not start\n"
s_nomem:            .asciz "[kernel] the tasks' regions do not fit in memory: run with --mem 4M\n"
s_status:           .ascii "status"
s_cancel:           .ascii "cancel "
s_ok:               .asciz "OK"
s_cancelled:        .asciz "cancelled"
s_unknown_request:  .asciz "ERR unknown request"
s_not_cancellable:  .asciz "ERR not cancellable"
s_unknown_command:  .asciz "ERR unknown command"
s_noport:           .asciz "ERR no such port"
s_toolong:          .asciz "ERR message too long"
s_noreply:          .asciz "ERR no reply"
s_failed:           .asciz "ERR service failed"
s_notfound:         .asciz "ERR not found"
s_in_progress:      .asciz "in progress:"
s_queued:           .asciz "; queued: "

    .align 16
rx_ring:            .space 16 * NIC_N       # the card's rings: 16-byte aligned (docs/devices.md)
tx_ring:            .space 16 * NIC_N
urx_ring:           .space 16 * NIC_N
net_block:          .word rx_ring, tx_ring, urx_ring, NIC_N     # what HAL_NET_SETUP gives the card
rx_desc_buf:        .space 4 * NIC_N        # the buffer posted at each receive descriptor
rx_next:            .word 0                 # the driver's receive index, and how many from it are posted
rx_posted:          .word 0
urx_next:           .word 0
tx_next:            .word 0                 # the next transmit descriptor, and how many wait for a notification
tx_pending:         .word 0
free_count:         .word 0                 # free receive buffers (a stack)
free_list:          .space 4 * RX_COUNT
held_count:         .word 0                 # received messages not yet given to a task, in arrival order
held:               .space 4 * RX_COUNT
msg_len:            .space 4 * RX_COUNT     # length, tag and port of the message in each receive buffer
msg_tag:            .space 4 * RX_COUNT
msg_port:           .space 4 * RX_COUNT
bindings:           .space BIND_SIZE * BIND_MAX
bindings_end:
names:              .ascii "names"          # the kernel's own entry; the tasks register the others
                    .space 11
                    .word NAMES_PORT
                    .space NAME_SIZE * (NAME_MAX - 1)
names_end:
next_dynamic:       .word DYNAMIC_PORT0
booting:            .word 0                 # the boot is loading the tasks (a fault then: too little memory)
idle_armed:         .word 0
rx_big:             .word 0                 # the receive ring's big buffer: free, wanted or posted
urx_big:            .word 0                 # the urgent ring's big buffer is posted
ktext:              .space 256              # the kernel's own replies are composed here
