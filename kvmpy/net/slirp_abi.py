"""The libslirp 4.7 ABI used by ``-netdev user``, as a cffi cdef in ABI mode (no compiler at run
time).

Inert: declarations and constants only, copied from ``<slirp/libslirp.h>`` (libslirp 4.7.0,
Debian ``libslirp-dev``), with ``struct in_addr`` / ``struct in6_addr`` as glibc lays them out.
``SlirpConfig`` is the version 4 layout; ``tests/net/test_slirp_abi.py`` checks every size and
offset against the real header with a C probe.  Only :mod:`kvmpy.net.slirp` imports this module.
"""

from __future__ import annotations

import cffi

ffi = cffi.FFI()

ffi.cdef("""
/* glibc <netinet/in.h> */
struct in_addr {
    uint32_t s_addr;
};

struct in6_addr {
    union {
        uint8_t __u6_addr8[16];
        uint16_t __u6_addr16[8];
        uint32_t __u6_addr32[4];
    } __in6_u;
};

struct sockaddr_in;
struct sockaddr_in6;

/* <slirp/libslirp.h> 4.7.0 */
typedef struct Slirp Slirp;

enum {
    SLIRP_POLL_IN = 1,
    SLIRP_POLL_OUT = 2,
    SLIRP_POLL_PRI = 4,
    SLIRP_POLL_ERR = 8,
    SLIRP_POLL_HUP = 16,
};

typedef ssize_t (*SlirpReadCb)(void *buf, size_t len, void *opaque);
typedef ssize_t (*SlirpWriteCb)(const void *buf, size_t len, void *opaque);
typedef void (*SlirpTimerCb)(void *opaque);
typedef int (*SlirpAddPollCb)(int fd, int events, void *opaque);
typedef int (*SlirpGetREventsCb)(int idx, void *opaque);

typedef enum SlirpTimerId {
    SLIRP_TIMER_RA,
    SLIRP_TIMER_NUM,
} SlirpTimerId;

typedef struct SlirpCb {
    SlirpWriteCb send_packet;
    void (*guest_error)(const char *msg, void *opaque);
    int64_t (*clock_get_ns)(void *opaque);
    void *(*timer_new)(SlirpTimerCb cb, void *cb_opaque, void *opaque);
    void (*timer_free)(void *timer, void *opaque);
    void (*timer_mod)(void *timer, int64_t expire_time, void *opaque);
    void (*register_poll_fd)(int fd, void *opaque);
    void (*unregister_poll_fd)(int fd, void *opaque);
    void (*notify)(void *opaque);
    /* version 4 */
    void (*init_completed)(Slirp *slirp, void *opaque);
    void *(*timer_new_opaque)(SlirpTimerId id, void *cb_opaque, void *opaque);
} SlirpCb;

typedef struct SlirpConfig {
    uint32_t version;
    /* version 1 */
    int restricted;
    bool in_enabled;
    struct in_addr vnetwork;
    struct in_addr vnetmask;
    struct in_addr vhost;
    bool in6_enabled;
    struct in6_addr vprefix_addr6;
    uint8_t vprefix_len;
    struct in6_addr vhost6;
    const char *vhostname;
    const char *tftp_server_name;
    const char *tftp_path;
    const char *bootfile;
    struct in_addr vdhcp_start;
    struct in_addr vnameserver;
    struct in6_addr vnameserver6;
    const char **vdnssearch;
    const char *vdomainname;
    size_t if_mtu;
    size_t if_mru;
    bool disable_host_loopback;
    bool enable_emu;
    /* version 2 */
    struct sockaddr_in *outbound_addr;
    struct sockaddr_in6 *outbound_addr6;
    /* version 3 */
    bool disable_dns;
    /* version 4 */
    bool disable_dhcp;
} SlirpConfig;

Slirp *slirp_new(const SlirpConfig *cfg, const SlirpCb *callbacks, void *opaque);
void slirp_cleanup(Slirp *slirp);
void slirp_pollfds_fill(Slirp *slirp, uint32_t *timeout,
                        SlirpAddPollCb add_poll, void *opaque);
void slirp_pollfds_poll(Slirp *slirp, int select_error,
                        SlirpGetREventsCb get_revents, void *opaque);
void slirp_input(Slirp *slirp, const uint8_t *pkt, int pkt_len);
void slirp_handle_timer(Slirp *slirp, SlirpTimerId id, void *cb_opaque);
int slirp_add_hostfwd(Slirp *slirp, int is_udp, struct in_addr host_addr,
                      int host_port, struct in_addr guest_addr, int guest_port);
int slirp_remove_hostfwd(Slirp *slirp, int is_udp, struct in_addr host_addr,
                         int host_port);
int slirp_add_exec(Slirp *slirp, const char *cmdline,
                   struct in_addr *guest_addr, int guest_port);
int slirp_add_guestfwd(Slirp *slirp, SlirpWriteCb write_cb, void *opaque,
                       struct in_addr *guest_addr, int guest_port);
size_t slirp_socket_can_recv(Slirp *slirp, struct in_addr guest_addr,
                             int guest_port);
void slirp_socket_recv(Slirp *slirp, struct in_addr guest_addr, int guest_port,
                       const uint8_t *buf, int size);
int slirp_remove_guestfwd(Slirp *slirp, struct in_addr guest_addr,
                          int guest_port);
char *slirp_connection_info(Slirp *slirp);
const char *slirp_version_string(void);

/* glib: the strings libslirp returns are g_malloc'd */
void g_free(void *mem);
""")

SLIRP_LIBRARY = "libslirp.so.0"
GLIB_LIBRARY = "libglib-2.0.so.0"
DEBIAN_PACKAGE = "libslirp0"

SLIRP_CONFIG_VERSION = 4
"""The ``SlirpConfig`` layout above (4.7 adds ``disable_dhcp`` and ``timer_new_opaque``)."""

UINT32_MAX = 0xFFFFFFFF

SLIRP_POLL_IN = 1 << 0
SLIRP_POLL_OUT = 1 << 1
SLIRP_POLL_PRI = 1 << 2
SLIRP_POLL_ERR = 1 << 3
SLIRP_POLL_HUP = 1 << 4

SLIRP_TIMER_RA = 0
