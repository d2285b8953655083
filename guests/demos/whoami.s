# Which mode am I in? A kernel asks with getpsw, which reads the PSW without trapping on x86like.
# On the bare machine it prints "supervisor". Under trap-and-emulate on x86like the kernel really runs in
# user mode, getpsw does not trap, and the guest sees the truth the monitor wanted to hide: "user".
        la      sp, stack_top
        getpsw  r10
        andi    r10, r10, 1             # the S bit
        la      r2, msg_kernel
        call    print_str
        la      r2, msg_user
        beqz    r10, 1f
        la      r2, msg_super
1:      call    print_str
        mov     r1, r10                 # exit status: 1 = supervisor, 0 = user
        halt

msg_kernel: .asciz "the kernel runs in "
msg_super:  .asciz "supervisor mode\n"
msg_user:   .asciz "user mode\n"
        .include "../programs/lib.s"
        .align  4
        .space  256
stack_top:
