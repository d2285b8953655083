# nic.s - the network card's ports and bits (docs/devices.md), for every driver to include.
# tests/test_nic.py holds these values to the device model, popek/isa/devices/nic.py.
.equ NIC_CTRL,      0x11
.equ NIC_RX,        0x12
.equ NIC_TX,        0x13
.equ NIC_URX,       0x14
.equ NIC_SIZE,      0x15
.equ NIC_DOORBELL,  0x16
.equ NIC_STATUS,    0x17
.equ NIC_ERROR,     0x18
.equ NIC_EV_TX,     2
.equ NIC_EV_ALL,    15              # every event: RX, TX, URGENT, ERROR
.equ NIC_OWN,       0x80000000      # a descriptor the card owns
