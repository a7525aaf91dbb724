/* Sv39: see mmu.inc. */
#define LEVELS 3
#define SATP_MODE 8
#include "mmu.inc"
