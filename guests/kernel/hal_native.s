# hal_native.s - the kernel's hardware abstraction layer for the bare machine (and full virtualization).
#
# Every privileged or sensitive instruction the kernel executes is in one of these macros, so that another
# HAL (hal_pv.s, built with -D PARAVIRT) can replace each of them, for instance with a hypercall. A macro
# changes only the registers named in its arguments.

# --- trap state ------------------------------------------------------------------------------------------
.macro HAL_SET_IVT reg              # trap vector <- reg
    mtcr ivt, \reg
.endm
.macro HAL_SCRATCH_SAVE reg         # scratch <- reg (frees reg at trap entry)
    mtcr scratch, \reg
.endm
.macro HAL_SCRATCH_LOAD reg         # reg <- scratch
    mfcr \reg, scratch
.endm
.macro HAL_GET_CAUSE reg            # reg <- cause of the last trap
    mfcr \reg, cause
.endm
.macro HAL_GET_BADADDR reg          # reg <- badaddr of the last trap
    mfcr \reg, badaddr
.endm
.macro HAL_GET_EPC reg              # reg <- pc of the trapped (or next) instruction
    mfcr \reg, epc
.endm
.macro HAL_GET_EPSW reg             # reg <- psw of the trapped context
    mfcr \reg, epsw
.endm

# --- the user context that HAL_ENTER_USER switches to -----------------------------------------------------
.macro HAL_SET_EPC reg
    mtcr epc, \reg
.endm
.macro HAL_SET_EPSW reg
    mtcr epsw, \reg
.endm
.macro HAL_SET_EBASE reg
    mtcr ebase, \reg
.endm
.macro HAL_SET_EBOUND reg
    mtcr ebound, \reg
.endm
.macro HAL_ENTER_USER               # psw, base, bound, pc <- epsw, ebase, ebound, epc
    iret
.endm

# --- interrupts, timer, time -----------------------------------------------------------------------------
.macro HAL_IRQ_DISABLE tmp          # clobbers tmp
    getpsw \tmp
    andi \tmp, \tmp, 1
    setpsw \tmp
.endm
.macro HAL_IRQ_ENABLE tmp           # clobbers tmp
    getpsw \tmp
    ori \tmp, \tmp, 2
    setpsw \tmp
.endm
.macro HAL_TIMER_SET reg            # timer interrupt after reg more instructions (0: off)
    mtcr timer, \reg
.endm
.macro HAL_CYCLE reg                # reg <- instructions retired so far
    mfcr \reg, cycle
.endm
.macro HAL_WFI                      # wait until an interrupt is pending
    wfi
.endm

# --- the network card (docs/devices.md): ports, and the device interrupt (cause 17) ------------------------
.include "nic.s"
# start the card on the rings named by the block at reg {rx, tx, urx, size}, its interrupt on; res <- 0 when
# it runs (clobbers res)
.macro HAL_NET_SETUP reg, res
    ld \res, 0(\reg)
    out NIC_RX, \res
    ld \res, 4(\reg)
    out NIC_TX, \res
    ld \res, 8(\reg)
    out NIC_URX, \res
    ld \res, 12(\reg)
    out NIC_SIZE, \res
    li \res, 3                      # ENABLE | IRQ
    out NIC_CTRL, \res
    in \res, NIC_CTRL
    andi \res, \res, 1
    xori \res, \res, 1
.endm
.macro HAL_NET_NOTIFY tmp           # the card sends what the transmit ring holds (clobbers tmp); its TX event is
    out NIC_DOORBELL, zero          # cleared at once, since the driver reads completions from the ring itself
    li \tmp, NIC_EV_TX
    out NIC_STATUS, \tmp
.endm
.macro HAL_NET_ACK tmp              # clear every event, which withdraws the interrupt (clobbers tmp); the driver
    li \tmp, NIC_EV_ALL             # then looks at all its rings, so nothing that arrives meanwhile is missed
    out NIC_STATUS, \tmp
.endm

# --- console and power -----------------------------------------------------------------------------------
.macro HAL_PUTC reg                 # write the low byte of reg to the console
    out 0, \reg
.endm
.macro HAL_CONS_WRITE from, to, tmp # write the bytes at from up to to (physical) (clobbers from, tmp)
hal_next\@:
    beq \from, \to, hal_end\@
    ldbu \tmp, 0(\from)
    out 0, \tmp
    addi \from, \from, 1
    j hal_next\@
hal_end\@:
.endm
.macro HAL_HALT                     # stop the machine; exit status r1 & 0xFF
    halt
.endm
