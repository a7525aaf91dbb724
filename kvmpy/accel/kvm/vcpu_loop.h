/*
 * kvmpy kvm: the vCPU run loop in C (optional; kvmpy/accel/kvm/_build.py builds it).
 *
 * kvm_vcpu_loop() calls KVM_RUN and completes MMIO exits to device windows served in C
 * (kvmpy/hw/c_mmio.h) itself, returning to Python only for every other exit: the 16550's
 * console output then costs a KVM exit and no trip into Python.  Without the built module
 * the Python run path does everything, as the riscv64 hosts with no compiler run it.
 *
 * This header is also the cffi cdef (the part between the CDEF markers).
 */
#ifndef KVMPY_KVM_VCPU_LOOP_H
#define KVMPY_KVM_VCPU_LOOP_H

#include <stdint.h>

/* CDEF-BEGIN */
typedef struct c_mmio_table kvm_c_mmio;

kvm_c_mmio *kvm_c_mmio_new(void);
void kvm_c_mmio_free(kvm_c_mmio *t);
/* -1 when full, empty, or overlapping a window already there.  fn is a c_mmio_fn. */
int kvm_c_mmio_add(kvm_c_mmio *t, uint64_t gpa, uint64_t size, void *fn, void *opaque);

/* KVM_RUN on vcpu_fd (its kvm_run mapped at run_area) until an exit that table does not
 * complete (table may be NULL).  Returns 0 with that exit in kvm_run, or -errno of a failed
 * KVM_RUN (-EINTR for a signal or immediate_exit); *handled counts the MMIO exits completed
 * here.  Called without the GIL: other threads run meanwhile. */
int kvm_vcpu_loop(int vcpu_fd, void *run_area, kvm_c_mmio *table, uint64_t *handled);
/* CDEF-END */

#endif
