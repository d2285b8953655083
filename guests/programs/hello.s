# Hello, world on the bare machine: print a string with out and halt with status 0.
        la      sp, stack_top
        la      r2, message
        call    print_str
        li      r1, 0
        halt

message: .asciz "Hello from P32!\n"

        .include "lib.s"
        .align  4
        .space  256
stack_top:
