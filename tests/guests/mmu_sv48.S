/* Sv48: see mmu.inc. */
#define LEVELS 4
#define SATP_MODE 9
#include "mmu.inc"
