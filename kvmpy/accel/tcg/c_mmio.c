/*
 * kvmpy tcg: the table of device windows served in C (kvmpy/hw/c_mmio.h), which the engine
 * consults in its MMIO slow path (mem_slow, shared by the interpreter and the translated code).
 */
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "c_mmio.h"

tcg_c_mmio *tcg_c_mmio_new(void)
{
    tcg_c_mmio *t = malloc(sizeof(*t));
    if (t)
        c_mmio_init(t);
    return t;
}

void tcg_c_mmio_free(tcg_c_mmio *t) { free(t); }

int tcg_c_mmio_add(tcg_c_mmio *t, uint64_t gpa, uint64_t size, void *fn, void *opaque)
{
    c_mmio_fn f;
    memcpy(&f, &fn, sizeof(f)); /* a function pointer passed as data (cffi) */
    return c_mmio_add(t, gpa, size, f, opaque);
}
