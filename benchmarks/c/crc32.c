/* The work of guests/programs/crc32.s in C: the CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of the
 * guest's 96-byte message, computed bit by bit, PASSES times (the first argument, default 1); prints it as the
 * guest does ("0x3b136a6e").
 */
#include "passes.h"

/* global and writable: the compiler cannot fold the CRC into a constant */
unsigned char message[] = "The quick brown fox jumps over the lazy dog. "
                          "Pack my box with five dozen liquor jugs! 0123456789";

__attribute__((noinline)) uint32_t crc32_bitwise(const unsigned char *p, const unsigned char *end)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (; p < end; p++) {
        crc ^= *p;
        for (int bit = 8; bit != 0; bit--) {
            uint32_t low = crc & 1u;
            crc >>= 1;
            if (low)
                crc ^= 0xEDB88320u;
        }
    }
    return ~crc;
}

static uint32_t one_pass(void)
{
    return crc32_bitwise(message, message + sizeof message - 1);
}

int main(int argc, char **argv)
{
    return run_passes(argc, argv, one_pass, "0x%08x\n");
}
