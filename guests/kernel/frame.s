# frame.s - a register frame: r1-r15 at offsets 4-60 from a base register (offset 0 is its owner's).
#
# The kernel's trap entry and exit, the system-call guest's and the native monitor's (guests/vmm) save and
# restore the interrupted registers in this layout; the macros write it once.

.macro FRAME_SAVE_R1_R14 base       # the frame at base <- r1-r14 (base is r15, saved by the caller its own way)
    st r1, 4(\base)
    st r2, 8(\base)
    st r3, 12(\base)
    st r4, 16(\base)
    st r5, 20(\base)
    st r6, 24(\base)
    st r7, 28(\base)
    st r8, 32(\base)
    st r9, 36(\base)
    st r10, 40(\base)
    st r11, 44(\base)
    st r12, 48(\base)
    st r13, 52(\base)
    st r14, 56(\base)
.endm
.macro FRAME_LOAD_R1_R13 base       # r1-r13 <- the frame at base (r14 or r15, left for the caller)
    ld r1, 4(\base)
    ld r2, 8(\base)
    ld r3, 12(\base)
    ld r4, 16(\base)
    ld r5, 20(\base)
    ld r6, 24(\base)
    ld r7, 28(\base)
    ld r8, 32(\base)
    ld r9, 36(\base)
    ld r10, 40(\base)
    ld r11, 44(\base)
    ld r12, 48(\base)
    ld r13, 52(\base)
.endm
