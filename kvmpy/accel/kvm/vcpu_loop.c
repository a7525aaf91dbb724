/*
 * kvmpy kvm: the vCPU run loop in C (see vcpu_loop.h).
 */
#include "vcpu_loop.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "c_mmio.h"

kvm_c_mmio *kvm_c_mmio_new(void)
{
    kvm_c_mmio *t = malloc(sizeof(*t));
    if (t)
        c_mmio_init(t);
    return t;
}

void kvm_c_mmio_free(kvm_c_mmio *t) { free(t); }

int kvm_c_mmio_add(kvm_c_mmio *t, uint64_t gpa, uint64_t size, void *fn, void *opaque)
{
    c_mmio_fn f;
    memcpy(&f, &fn, sizeof(f)); /* a function pointer passed as data (cffi) */
    return c_mmio_add(t, gpa, size, f, opaque);
}

int kvm_vcpu_loop(int vcpu_fd, void *run_area, kvm_c_mmio *table, uint64_t *handled)
{
    struct kvm_run *run = run_area;
    uint64_t n = 0;
    int ret = 0;
    for (;;) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
            ret = -errno;
            break;
        }
        if (run->exit_reason != KVM_EXIT_MMIO || !table)
            break;
        uint32_t len = run->mmio.len;
        if (len == 0 || len > sizeof(run->mmio.data))
            break;
        /* data[] holds the access in guest byte order: little-endian on x86 and RISC-V,
         * as on the hosts that run them */
        uint64_t value = 0;
        int is_write = run->mmio.is_write != 0;
        if (is_write)
            memcpy(&value, run->mmio.data, len);
        if (!c_mmio_access(table, run->mmio.phys_addr, len, is_write, &value))
            break;
        if (!is_write)
            memcpy(run->mmio.data, &value, len);
        n++;
    }
    *handled = n;
    return ret;
}
