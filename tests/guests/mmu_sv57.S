/* Sv57: see mmu.inc. */
#define LEVELS 5
#define SATP_MODE 10
#include "mmu.inc"
