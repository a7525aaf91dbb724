/*
 * kvmpy: device windows served in C, the interface between C device models and accelerators.
 *
 * A device model that completes some accesses without Python (kvmpy/hw/char/uart_fast.c)
 * exports one function of type c_mmio_fn; an accelerator that reaches it on an MMIO access
 * (the tcg engine, the KVM run loop) calls it with the offset inside the device's window
 * before it would exit to Python.  The function returns nonzero when it completed the access
 * (a load's value in *value, zero-extended from size bytes), 0 when Python must take it as
 * usual; it then has changed nothing.  It may be called from any thread at any time, so a
 * device serialises its own state.
 *
 * struct c_mmio_table is a small fixed table of such windows, header-only so that each
 * extension module (tcg engine, KVM run loop) compiles its own copy.
 */
#ifndef KVMPY_C_MMIO_H
#define KVMPY_C_MMIO_H

#include <stdint.h>

typedef int (*c_mmio_fn)(void *opaque, uint64_t offset, uint32_t size, int is_write,
                         uint64_t *value);

#define C_MMIO_MAX 8

struct c_mmio_window {
    uint64_t base, size;
    c_mmio_fn fn;
    void *opaque;
};

struct c_mmio_table {
    int n;
    uint64_t lo, hi;      /* [lo, hi) covers every window: one test rejects most addresses */
    struct c_mmio_window w[C_MMIO_MAX];
};

static inline void c_mmio_init(struct c_mmio_table *t)
{
    t->n = 0;
    t->lo = UINT64_MAX;
    t->hi = 0;
}

/* Add a window; -1 when the table is full, the window is empty or wraps, or overlaps one. */
static inline int c_mmio_add(struct c_mmio_table *t, uint64_t base, uint64_t size,
                             c_mmio_fn fn, void *opaque)
{
    if (t->n >= C_MMIO_MAX || !size || !fn || base + size < base)
        return -1;
    for (int i = 0; i < t->n; i++)
        if (base < t->w[i].base + t->w[i].size && t->w[i].base < base + size)
            return -1;
    struct c_mmio_window *w = &t->w[t->n++];
    w->base = base;
    w->size = size;
    w->fn = fn;
    w->opaque = opaque;
    if (base < t->lo)
        t->lo = base;
    if (base + size > t->hi)
        t->hi = base + size;
    return 0;
}

/* Offer an access of size bytes at gpa to the window holding it: 1 when C completed it.
 * A store's value is cut to size bytes first. */
static inline int c_mmio_access(struct c_mmio_table *t, uint64_t gpa, uint32_t size,
                                int is_write, uint64_t *value)
{
    if (gpa < t->lo || gpa >= t->hi)
        return 0;
    for (int i = 0; i < t->n; i++) {
        struct c_mmio_window *w = &t->w[i];
        uint64_t offset = gpa - w->base;
        if (offset < w->size && size <= w->size - offset) {
            if (is_write && size < 8)
                *value &= (UINT64_C(1) << (8 * size)) - 1;
            return w->fn(w->opaque, offset, size, is_write, value) != 0;
        }
    }
    return 0;
}

#endif
