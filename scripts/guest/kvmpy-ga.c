/*
 * kvmpy-ga: the guest agent of kvmpy's bundled guest.
 *
 * It speaks the subset of the QEMU guest agent protocol (qga/qapi-schema.json) that kvmpy's host
 * side uses, over a virtio-serial port (default /dev/virtio-ports/org.qemu.guest_agent.0):
 * JSON requests {"execute": NAME, "arguments": {...}, "id": ...} in, one JSON response line out
 * ({"return": ...} or {"error": {"class": ..., "desc": ...}}, with the request's "id").
 *
 *   guest-sync, guest-sync-delimited (response preceded by a 0xFF byte), guest-ping,
 *   guest-info, guest-get-osinfo, guest-exec, guest-exec-status, guest-file-open,
 *   guest-file-read, guest-file-write, guest-file-close, guest-network-get-interfaces,
 *   guest-shutdown (no response).
 *
 * A 0xFF byte in the input drops any partial request (qga's resynchronisation).  Every input
 * is bounded: a request's size, the JSON nesting depth and node count, the captured output of
 * a process (16 MiB per stream, then out-truncated/err-truncated, as qemu-ga), the number of
 * processes and open files.  A malformed request gets an error response; nothing the host sends
 * ends the agent.
 *
 *   kvmpy-ga [-p PATH]     PATH "-": requests on stdin, responses on stdout (for testing)
 *   kvmpy-ga --link-ports  keep /dev/virtio-ports/NAME -> ../vportNpM for every named port
 *
 * --link-ports does what udev's rule for virtio-ports does in a guest without udev: it listens
 * for kernel uevents (netlink) before it scans /sys/class/virtio-ports, so that a port whose
 * name arrives later (the PORT_NAME control message, a "change" uevent) is linked too.  When
 * it links NAME and /etc/virtio-ports/NAME is executable, it starts that hook once, in the
 * background, with the link as its argument: that is how the guest agent is started when (and
 * only when) its port exists.
 *
 * Plain C99 with POSIX and Linux calls; single-threaded, one poll() loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <ifaddrs.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_VERSION "kvmpy-ga 1.0"
#define DEFAULT_PORT "/dev/virtio-ports/org.qemu.guest_agent.0"

#define MAX_REQUEST (24u << 20)        /* bytes of one request (base64 file-write chunks) */
#define MAX_DEPTH 32                   /* JSON nesting */
#define MAX_NODES 65536                /* JSON values in one request */
#define MAX_OUTPUT (16u << 20)         /* captured bytes per stream, as qemu-ga */
#define OUTPUT_BACKLOG (96u << 20)     /* stop reading requests while this much is unsent */
#define MAX_PROCS 128
#define MAX_FILES 128
#define READ_COUNT_DEFAULT 4096
#define READ_COUNT_MAX (48 << 20)      /* guest-file-read's limit in qemu-ga */
#define FIRST_HANDLE 1000              /* qemu-ga's first file handle */
#define PORT_RETRY_MS 100              /* no host on the port: look again after this */

/* ------------------------------------------------------------------------------------------ */
/* Growable byte buffer                                                                        */
/* ------------------------------------------------------------------------------------------ */

struct buf {
    char *data;
    size_t len, cap;
};

static void die(const char *what)
{
    fprintf(stderr, "kvmpy-ga: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            errno = ENOMEM;
            die("buffer");
        }
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (!data)
        die("out of memory");
    b->data = data;
    b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t len)
{
    buf_reserve(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0;
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void buf_drop_front(struct buf *b, size_t n)
{
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    if (b->data)
        b->data[b->len] = 0;
}

static void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON: a bounded parser into a node array, and a writer                                      */
/* ------------------------------------------------------------------------------------------ */

enum jtype { J_NULL, J_BOOL, J_INT, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT };

struct jnode {
    enum jtype type;
    int64_t i;            /* J_INT, J_BOOL */
    const char *s;        /* J_STRING: decoded, NUL-terminated; J_NUMBER: the literal */
    size_t len;           /* bytes of s */
    const char *key;      /* member name when in an object */
    int first, next;      /* first child, next sibling (-1: none) */
    size_t count;         /* children */
};

struct jparser {
    char *p, *end;
    struct jnode *nodes;
    int n, max;
    const char *error;
};

static void skip_ws(struct jparser *jp)
{
    while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
        jp->p++;
}

static int new_node(struct jparser *jp, enum jtype type)
{
    if (jp->n >= jp->max) {
        jp->error = "JSON token count limit exceeded";
        return -1;
    }
    struct jnode *node = &jp->nodes[jp->n];
    memset(node, 0, sizeof(*node));
    node->type = type;
    node->first = node->next = -1;
    return jp->n++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    int v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p[k]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static char *put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        *out++ = (char)cp;
    } else if (cp < 0x800) {
        *out++ = (char)(0xC0 | (cp >> 6));
        *out++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *out++ = (char)(0xE0 | (cp >> 12));
        *out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *out++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *out++ = (char)(0xF0 | (cp >> 18));
        *out++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *out++ = (char)(0x80 | (cp & 0x3F));
    }
    return out;
}

/* A string, decoded in place (the decoded form is never longer than the escaped one). */
static int parse_string(struct jparser *jp, const char **text, size_t *len)
{
    char *start = ++jp->p; /* past the opening quote */
    char *out = start;
    while (jp->p < jp->end) {
        unsigned char c = (unsigned char)*jp->p;
        if (c == '"') {
            jp->p++;
            *out = 0;
            *text = start;
            *len = (size_t)(out - start);
            return 0;
        }
        if (c < 0x20) {
            jp->error = "JSON parse error, control character in a string";
            return -1;
        }
        if (c != '\\') {
            *out++ = (char)c;
            jp->p++;
            continue;
        }
        if (jp->end - jp->p < 2)
            break;
        char e = jp->p[1];
        jp->p += 2;
        switch (e) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '/': *out++ = '/'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            int cp = read_hex4(jp->p, jp->end);
            if (cp < 0) {
                jp->error = "JSON parse error, invalid escape sequence in string";
                return -1;
            }
            jp->p += 4;
            uint32_t code = (uint32_t)cp;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                int lo = (jp->end - jp->p >= 6 && jp->p[0] == '\\' && jp->p[1] == 'u')
                             ? read_hex4(jp->p + 2, jp->end) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    jp->error = "JSON parse error, invalid UTF-16 surrogate pair";
                    return -1;
                }
                jp->p += 6;
                code = 0x10000 + (((uint32_t)cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                jp->error = "JSON parse error, invalid UTF-16 surrogate pair";
                return -1;
            }
            out = put_utf8(out, code);
            break;
        }
        default:
            jp->error = "JSON parse error, invalid escape sequence in string";
            return -1;
        }
    }
    jp->error = "JSON parse error, unterminated string";
    return -1;
}

static int parse_value(struct jparser *jp, int depth);

static int parse_container(struct jparser *jp, int depth, bool object)
{
    if (depth >= MAX_DEPTH) {
        jp->error = "JSON nesting depth limit exceeded";
        return -1;
    }
    int self = new_node(jp, object ? J_OBJECT : J_ARRAY);
    if (self < 0)
        return -1;
    char close = object ? '}' : ']';
    jp->p++;
    skip_ws(jp);
    if (jp->p < jp->end && *jp->p == close) {
        jp->p++;
        return self;
    }
    int last = -1;
    for (;;) {
        const char *key = NULL;
        size_t keylen = 0;
        skip_ws(jp);
        if (object) {
            if (jp->p >= jp->end || *jp->p != '"') {
                jp->error = "JSON parse error, expecting a member name";
                return -1;
            }
            if (parse_string(jp, &key, &keylen) < 0)
                return -1;
            skip_ws(jp);
            if (jp->p >= jp->end || *jp->p != ':') {
                jp->error = "JSON parse error, missing : in object pair";
                return -1;
            }
            jp->p++;
        }
        int child = parse_value(jp, depth + 1);
        if (child < 0)
            return -1;
        jp->nodes[child].key = key;
        if (last < 0)
            jp->nodes[self].first = child;
        else
            jp->nodes[last].next = child;
        last = child;
        jp->nodes[self].count++;
        skip_ws(jp);
        if (jp->p < jp->end && *jp->p == ',') {
            jp->p++;
            continue;
        }
        if (jp->p < jp->end && *jp->p == close) {
            jp->p++;
            return self;
        }
        jp->error = object ? "JSON parse error, expecting , or } in object"
                           : "JSON parse error, expecting , or ] in array";
        return -1;
    }
}

static int parse_number(struct jparser *jp)
{
    char *start = jp->p;
    bool integer = true;
    if (jp->p < jp->end && *jp->p == '-')
        jp->p++;
    if (jp->p >= jp->end || *jp->p < '0' || *jp->p > '9') {
        jp->error = "JSON parse error, invalid number";
        return -1;
    }
    while (jp->p < jp->end && *jp->p >= '0' && *jp->p <= '9')
        jp->p++;
    if (jp->p < jp->end && *jp->p == '.') {
        integer = false;
        jp->p++;
        while (jp->p < jp->end && *jp->p >= '0' && *jp->p <= '9')
            jp->p++;
    }
    if (jp->p < jp->end && (*jp->p == 'e' || *jp->p == 'E')) {
        integer = false;
        jp->p++;
        if (jp->p < jp->end && (*jp->p == '+' || *jp->p == '-'))
            jp->p++;
        while (jp->p < jp->end && *jp->p >= '0' && *jp->p <= '9')
            jp->p++;
    }
    int self = new_node(jp, J_NUMBER);
    if (self < 0)
        return -1;
    struct jnode *node = &jp->nodes[self];
    node->s = start;
    node->len = (size_t)(jp->p - start);
    if (integer && node->len < 24) {
        char tmp[24];
        memcpy(tmp, start, node->len);
        tmp[node->len] = 0;
        errno = 0;
        long long v = strtoll(tmp, NULL, 10);
        if (errno == 0) {
            node->type = J_INT;
            node->i = v;
        }
    }
    return self;
}

static bool match_word(struct jparser *jp, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0)
        return false;
    jp->p += n;
    return true;
}

static int parse_value(struct jparser *jp, int depth)
{
    skip_ws(jp);
    if (jp->p >= jp->end) {
        jp->error = "JSON parse error, unexpected end of input";
        return -1;
    }
    char c = *jp->p;
    if (c == '{' || c == '[')
        return parse_container(jp, depth, c == '{');
    if (c == '"') {
        const char *text;
        size_t len;
        if (parse_string(jp, &text, &len) < 0)
            return -1;
        int self = new_node(jp, J_STRING);
        if (self >= 0) {
            jp->nodes[self].s = text;
            jp->nodes[self].len = len;
        }
        return self;
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number(jp);
    int self = -1;
    if (match_word(jp, "true") || match_word(jp, "false")) {
        self = new_node(jp, J_BOOL);
        if (self >= 0)
            jp->nodes[self].i = jp->p[-1] == 'e' && jp->p[-2] == 'u';
        return self;
    }
    if (match_word(jp, "null"))
        return new_node(jp, J_NULL);
    jp->error = "JSON parse error, invalid token";
    return -1;
}

static void json_string(struct buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, len + 2);
    buf_add(b, "\"", 1);
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_add(b, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_add(b, esc, 6);
            i++;
        } else if (c < 0x80) {
            buf_add(b, &s[i], 1);
            i++;
        } else {
            /* Valid UTF-8 passes through; any other byte becomes U+FFFD. */
            size_t n = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
            bool ok = n > 0 && i + n <= len;
            for (size_t k = 1; ok && k < n; k++)
                ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
            if (ok) {
                buf_add(b, &s[i], n);
                i += n;
            } else {
                buf_str(b, "\\ufffd");
                i++;
            }
        }
    }
    buf_add(b, "\"", 1);
}

static void json_cstring(struct buf *b, const char *s)
{
    json_string(b, s, strlen(s));
}

static void json_node(struct buf *b, const struct jnode *nodes, int index)
{
    const struct jnode *node = &nodes[index];
    switch (node->type) {
    case J_NULL: buf_str(b, "null"); break;
    case J_BOOL: buf_str(b, node->i ? "true" : "false"); break;
    case J_INT: buf_printf(b, "%lld", (long long)node->i); break;
    case J_NUMBER: buf_add(b, node->s, node->len); break;
    case J_STRING: json_string(b, node->s, node->len); break;
    case J_ARRAY:
    case J_OBJECT: {
        buf_str(b, node->type == J_ARRAY ? "[" : "{");
        for (int c = node->first; c >= 0; c = nodes[c].next) {
            if (c != node->first)
                buf_str(b, ", ");
            if (node->type == J_OBJECT) {
                json_cstring(b, nodes[c].key);
                buf_str(b, ": ");
            }
            json_node(b, nodes, c);
        }
        buf_str(b, node->type == J_ARRAY ? "]" : "}");
        break;
    }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* base64 (RFC 4648, with padding)                                                             */
/* ------------------------------------------------------------------------------------------ */

static void base64_encode(struct buf *b, const unsigned char *data, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    buf_reserve(b, (len + 2) / 3 * 4);
    char *out = b->data + b->len;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *out++ = alphabet[v >> 18];
        *out++ = alphabet[(v >> 12) & 63];
        *out++ = alphabet[(v >> 6) & 63];
        *out++ = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < len ? (uint32_t)data[i + 1] << 8 : 0);
        *out++ = alphabet[v >> 18];
        *out++ = alphabet[(v >> 12) & 63];
        *out++ = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        *out++ = '=';
    }
    b->len = (size_t)(out - b->data);
    b->data[b->len] = 0;
}

/* Decoding table: 0..63 for the alphabet, B64_PAD for '=', B64_SKIP for '\n', else invalid. */
enum { B64_INVALID = 64, B64_PAD, B64_SKIP };

static void b64_table(unsigned char table[256])
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    memset(table, B64_INVALID, 256);
    for (int k = 0; k < 64; k++)
        table[(unsigned char)alphabet[k]] = (unsigned char)k;
    table['='] = B64_PAD;
    table['\n'] = B64_SKIP;
}

/* Decode into out (at least len * 3 / 4 + 3 bytes); NULL and *error when malformed.
 * Newlines are skipped and decoding stops at the first '=' (qemu's qbase64_decode + glib). */
static unsigned char *base64_decode(const char *s, size_t len, size_t *out_len,
                                    const char **error)
{
    if (memchr(s, 0, len)) {
        *error = "Base64 data contains embedded NUL characters";
        return NULL;
    }
    unsigned char table[256];
    b64_table(table);
    unsigned char *out = malloc(len / 4 * 3 + 4);
    if (!out)
        die("out of memory");
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    bool padded = false;
    for (size_t i = 0; i < len; i++) {
        unsigned v = table[(unsigned char)s[i]];
        if (v < 64) {
            if (padded)
                continue; /* after '=': validated, not decoded */
            acc = (acc << 6) | v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                out[n++] = (unsigned char)(acc >> bits);
                acc &= (1u << bits) - 1;
            }
        } else if (v == B64_PAD) {
            padded = true;
        } else if (v == B64_INVALID) {
            free(out);
            *error = "Base64 data contains invalid characters";
            return NULL;
        }
    }
    *out_len = n;
    return out;
}

/* ------------------------------------------------------------------------------------------ */
/* Agent state                                                                                 */
/* ------------------------------------------------------------------------------------------ */

struct stream {
    int fd;               /* -1 once closed */
    struct buf data;
    bool truncated;
};

struct proc {
    bool used;
    pid_t pid;
    bool finished;
    int status;
    bool capture;
    struct stream out, err;
    int in_fd;            /* stdin pipe while input-data is being written */
    unsigned char *input;
    size_t input_len, input_done;
};

struct file {
    bool used;
    int64_t handle;
    int fd;
};

struct agent {
    int in_fd, out_fd;
    bool port_mode;          /* a virtio port: EOF means no host, not the end */
    bool stdin_eof;
    struct buf out;          /* responses; out.data[out_head..out.len) not written yet */
    size_t out_head;
    /* framing of the request stream */
    struct buf req;
    int depth;
    bool in_string, escape, started, overflow, garbage;
    struct timespec retry_at;
    bool waiting_host;
    int sigfd;
    struct proc procs[MAX_PROCS];
    struct file files[MAX_FILES];
    int64_t next_handle;
    struct jnode *nodes;
    bool shutdown_requested;
    int shutdown_cmd;
};

struct request {
    struct agent *ag;
    struct jnode *nodes;
    int args;             /* the arguments object, -1 when absent */
    int id;               /* the id value, -1 when absent */
    struct buf *resp;     /* the response under construction */
    bool delimited;
    bool no_response;
};

/* ------------------------------------------------------------------------------------------ */
/* Responses                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Queue {KEY: VALUE[, "id": ID]} and a newline (after 0xFF for guest-sync-delimited). */
static void queue_response(struct request *rq, const char *key, const char *value, size_t len)
{
    struct buf *out = &rq->ag->out;
    if (rq->delimited)
        buf_add(out, "\xff", 1);
    buf_printf(out, "{\"%s\": ", key);
    buf_add(out, value, len);
    if (rq->id >= 0) {
        buf_str(out, ", \"id\": ");
        json_node(out, rq->nodes, rq->id);
    }
    buf_str(out, "}\n");
}

static int error_reply(struct request *rq, const char *klass, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int error_reply(struct request *rq, const char *klass, const char *fmt, ...)
{
    char desc[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(desc, sizeof(desc), fmt, ap);
    va_end(ap);
    struct buf body = {0};
    buf_str(&body, "{\"class\": ");
    json_cstring(&body, klass);
    buf_str(&body, ", \"desc\": ");
    json_cstring(&body, desc);
    buf_str(&body, "}");
    rq->delimited = false;
    queue_response(rq, "error", body.data, body.len);
    buf_free(&body);
    return -1;
}

#define ERR(rq, ...) error_reply(rq, "GenericError", __VA_ARGS__)

/* The "return" value is built in rq->resp; this wraps and queues it. */
static int return_reply(struct request *rq)
{
    if (rq->resp->len)
        queue_response(rq, "return", rq->resp->data, rq->resp->len);
    else
        queue_response(rq, "return", "{}", 2);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Arguments, checked as QEMU's input visitor does                                             */
/* ------------------------------------------------------------------------------------------ */

static int arg_find(struct request *rq, const char *name)
{
    if (rq->args < 0)
        return -1;
    for (int c = rq->nodes[rq->args].first; c >= 0; c = rq->nodes[c].next)
        if (strcmp(rq->nodes[c].key, name) == 0)
            return c;
    return -1;
}

/* Refuse members not in the NULL-terminated list. */
static int args_allowed(struct request *rq, const char *const *names)
{
    if (rq->args < 0)
        return 0;
    for (int c = rq->nodes[rq->args].first; c >= 0; c = rq->nodes[c].next) {
        bool known = false;
        for (const char *const *n = names; *n; n++)
            known = known || strcmp(*n, rq->nodes[c].key) == 0;
        if (!known)
            return ERR(rq, "Parameter '%s' is unexpected", rq->nodes[c].key);
    }
    return 0;
}

/* 1 when present, 0 when absent and optional, -1 after an error reply. */
static int arg_int(struct request *rq, const char *name, bool required, int64_t *value)
{
    int c = arg_find(rq, name);
    if (c < 0) {
        if (required)
            return ERR(rq, "Parameter '%s' is missing", name);
        return 0;
    }
    if (rq->nodes[c].type != J_INT)
        return ERR(rq, "Invalid parameter type for '%s', expected: integer", name);
    *value = rq->nodes[c].i;
    return 1;
}

static int arg_bool(struct request *rq, const char *name, bool *value)
{
    int c = arg_find(rq, name);
    if (c < 0)
        return 0;
    if (rq->nodes[c].type != J_BOOL)
        return ERR(rq, "Invalid parameter type for '%s', expected: boolean", name);
    *value = rq->nodes[c].i != 0;
    return 1;
}

static int check_c_string(struct request *rq, const char *name, const struct jnode *node)
{
    if (strlen(node->s) != node->len)
        return ERR(rq, "Parameter '%s' contains a NUL character", name);
    return 0;
}

static int arg_str(struct request *rq, const char *name, bool required, const char **value,
                   size_t *len)
{
    int c = arg_find(rq, name);
    if (c < 0) {
        if (required)
            return ERR(rq, "Parameter '%s' is missing", name);
        return 0;
    }
    const struct jnode *node = &rq->nodes[c];
    if (node->type != J_STRING)
        return ERR(rq, "Invalid parameter type for '%s', expected: string", name);
    if (!len && check_c_string(rq, name, node) < 0)
        return -1;
    *value = node->s;
    if (len)
        *len = node->len;
    return 1;
}

/* A list of strings as a NULL-terminated array (pointing into the request); *list NULL when
 * absent. */
static int arg_strlist(struct request *rq, const char *name, char ***list)
{
    *list = NULL;
    int c = arg_find(rq, name);
    if (c < 0)
        return 0;
    const struct jnode *node = &rq->nodes[c];
    if (node->type != J_ARRAY)
        return ERR(rq, "Invalid parameter type for '%s', expected: array", name);
    char **items = calloc(node->count + 1, sizeof(char *));
    if (!items)
        die("out of memory");
    size_t k = 0;
    for (int e = node->first; e >= 0; e = rq->nodes[e].next, k++) {
        char elem[64];
        snprintf(elem, sizeof(elem), "%s[%zu]", name, k);
        if (rq->nodes[e].type != J_STRING) {
            free(items);
            return ERR(rq, "Invalid parameter type for '%s', expected: string", elem);
        }
        if (check_c_string(rq, elem, &rq->nodes[e]) < 0) {
            free(items);
            return -1;
        }
        items[k] = (char *)rq->nodes[e].s;
    }
    *list = items;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Commands                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static const char *const NO_ARGS[] = {NULL};

static int cmd_sync(struct request *rq)
{
    static const char *const names[] = {"id", NULL};
    int64_t id;
    if (args_allowed(rq, names) < 0 || arg_int(rq, "id", true, &id) < 0)
        return -1;
    buf_printf(rq->resp, "%lld", (long long)id);
    return return_reply(rq);
}

static int cmd_sync_delimited(struct request *rq)
{
    rq->delimited = true;
    return cmd_sync(rq);
}

static int cmd_ping(struct request *rq)
{
    if (args_allowed(rq, NO_ARGS) < 0)
        return -1;
    return return_reply(rq);
}

static int cmd_info(struct request *rq);

/* os-release values: quoted values lose their quotes and backslash escapes, unquoted ones end
 * at a space or semicolon (qemu-ga's ga_osrelease_replace_special). */
static void osrelease_value(char *value)
{
    char quote = value[0];
    if (quote != '"' && quote != '\'') {
        value[strcspn(value, " ;")] = 0;
        return;
    }
    char *out = value, *p = value + 1;
    while (*p && *p != quote) {
        if (*p == '\\' && p[1] && strchr("$'\"\\`", p[1]))
            p++;
        *out++ = *p++;
    }
    *out = 0;
}

static int cmd_osinfo(struct request *rq)
{
    static const struct {
        const char *key, *field;
    } fields[] = {
        {"ID", "id"}, {"NAME", "name"}, {"PRETTY_NAME", "pretty-name"},
        {"VERSION", "version"}, {"VERSION_ID", "version-id"}, {"VARIANT", "variant"},
        {"VARIANT_ID", "variant-id"},
    };
    if (args_allowed(rq, NO_ARGS) < 0)
        return -1;
    struct utsname u;
    if (uname(&u) != 0)
        return ERR(rq, "uname failed: %s", strerror(errno));
    struct buf *r = rq->resp;
    buf_str(r, "{\"kernel-release\": ");
    json_cstring(r, u.release);
    buf_str(r, ", \"kernel-version\": ");
    json_cstring(r, u.version);
    buf_str(r, ", \"machine\": ");
    json_cstring(r, u.machine);
    FILE *f = fopen("/etc/os-release", "re");
    if (!f)
        f = fopen("/usr/lib/os-release", "re");
    if (f) {
        char *found[sizeof(fields) / sizeof(fields[0])] = {0};
        char line[1024];
        while (fgets(line, sizeof(line), f)) {
            line[strcspn(line, "\n")] = 0;
            char *eq = strchr(line, '=');
            if (!eq || line[0] == '#')
                continue;
            *eq = 0;
            for (size_t k = 0; k < sizeof(fields) / sizeof(fields[0]); k++) {
                if (strcmp(line, fields[k].key) == 0) {
                    osrelease_value(eq + 1);
                    free(found[k]);
                    found[k] = strdup(eq + 1);
                }
            }
        }
        fclose(f);
        for (size_t k = 0; k < sizeof(fields) / sizeof(fields[0]); k++) {
            if (!found[k])
                continue;
            buf_printf(r, ", \"%s\": ", fields[k].field);
            json_cstring(r, found[k]);
            free(found[k]);
        }
    }
    buf_str(r, "}");
    return return_reply(rq);
}

/* exec --------------------------------------------------------------------------------------- */

static struct proc *find_proc(struct agent *ag, int64_t pid)
{
    for (int k = 0; k < MAX_PROCS; k++)
        if (ag->procs[k].used && ag->procs[k].pid == pid)
            return &ag->procs[k];
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void free_proc(struct proc *p)
{
    close_fd(&p->out.fd);
    close_fd(&p->err.fd);
    close_fd(&p->in_fd);
    buf_free(&p->out.data);
    buf_free(&p->err.data);
    free(p->input);
    memset(p, 0, sizeof(*p));
    p->out.fd = p->err.fd = p->in_fd = -1;
}

static const char *env_path(char **envp)
{
    if (envp) {
        for (char **e = envp; *e; e++)
            if (strncmp(*e, "PATH=", 5) == 0)
                return *e + 5;
    }
    const char *path = getenv("PATH");
    return path ? path : "/bin:/usr/bin:.";
}

/* In the child: execve the program, searching PATH when it has no slash (as glib's
 * G_SPAWN_SEARCH_PATH_FROM_ENVP).  Returns the errno to report. */
static int exec_child(const char *file, char **argv, char **envp, const char *search)
{
    char **env = envp ? envp : environ;
    if (strchr(file, '/')) {
        execve(file, argv, env);
        return errno;
    }
    int result = ENOENT;
    bool eacces = false;
    size_t flen = strlen(file);
    const char *dir = search;
    for (;;) {
        const char *colon = strchr(dir, ':');
        size_t dlen = colon ? (size_t)(colon - dir) : strlen(dir);
        char path[PATH_MAX];
        if (dlen + 1 + flen + 1 <= sizeof(path)) {
            if (dlen) {
                memcpy(path, dir, dlen);
                path[dlen] = '/';
                memcpy(path + dlen + 1, file, flen + 1);
            } else {
                memcpy(path, file, flen + 1);
            }
            execve(path, argv, env);
            result = errno;
            if (errno == EACCES)
                eacces = true;
            else if (errno != ENOENT && errno != ENOTDIR && errno != ENAMETOOLONG)
                return errno;
        }
        if (!colon)
            break;
        dir = colon + 1;
    }
    return eacces ? EACCES : result;
}

static int cmd_exec(struct request *rq)
{
    static const char *const names[] = {"path", "arg", "env", "input-data", "capture-output",
                                        NULL};
    struct agent *ag = rq->ag;
    const char *path = NULL, *input_b64 = NULL;
    size_t input_b64_len = 0;
    bool capture = false, capture_out = false, capture_err = false, merge = false;
    char **args = NULL, **envp = NULL;
    int has_input;
    if (args_allowed(rq, names) < 0 || arg_str(rq, "path", true, &path, NULL) < 0 ||
        arg_strlist(rq, "arg", &args) < 0)
        return -1;
    if (arg_strlist(rq, "env", &envp) < 0 ||
        (has_input = arg_str(rq, "input-data", false, &input_b64, &input_b64_len)) < 0) {
        free(args);
        return -1;
    }
    /* A boolean, or (qemu-ga 8.0 and later) a mode: none, stdout, stderr, separated (as
     * true), merged (stderr into the stdout capture). */
    int c = arg_find(rq, "capture-output");
    if (c >= 0 && rq->nodes[c].type == J_STRING) {
        const char *mode = rq->nodes[c].s;
        capture_out = !strcmp(mode, "stdout") || !strcmp(mode, "separated");
        capture_err = !strcmp(mode, "stderr") || !strcmp(mode, "separated");
        merge = !strcmp(mode, "merged");
        if (!capture_out && !capture_err && !merge && strcmp(mode, "none")) {
            free(args);
            free(envp);
            return ERR(rq, "Parameter 'capture-output' does not accept value '%s'", mode);
        }
    } else if (arg_bool(rq, "capture-output", &capture) < 0) {
        free(args);
        free(envp);
        return -1;
    } else {
        capture_out = capture_err = capture;
    }
    capture = capture_out || capture_err || merge;
    int result = -1;
    unsigned char *input = NULL;
    size_t input_len = 0;
    struct proc *p = NULL;
    int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1},
        status_pipe[2] = {-1, -1};
    size_t argc = 0;
    while (args && args[argc])
        argc++;
    char **argv = calloc(argc + 2, sizeof(char *));
    if (!argv)
        die("out of memory");
    argv[0] = (char *)path;
    for (size_t k = 0; k < argc; k++)
        argv[k + 1] = args[k];
    if (has_input) {
        const char *error = NULL;
        input = base64_decode(input_b64, input_b64_len, &input_len, &error);
        if (!input) {
            ERR(rq, "%s", error);
            goto out;
        }
    }
    for (int k = 0; k < MAX_PROCS && !p; k++)
        if (!ag->procs[k].used)
            p = &ag->procs[k];
    if (!p) {
        ERR(rq, "too many processes not collected by guest-exec-status (%d)", MAX_PROCS);
        goto out;
    }
    if (pipe2(status_pipe, O_CLOEXEC) < 0 || (has_input && pipe2(in_pipe, O_CLOEXEC) < 0) ||
        ((capture_out || merge) && pipe2(out_pipe, O_CLOEXEC) < 0) ||
        (capture_err && !merge && pipe2(err_pipe, O_CLOEXEC) < 0)) {
        ERR(rq, "Failed to create pipe for communicating with child process (%s)",
            strerror(errno));
        p = NULL;
        goto out;
    }
    const char *search = env_path(envp);
    pid_t pid = fork();
    if (pid < 0) {
        ERR(rq, "Failed to fork (%s)", strerror(errno));
        p = NULL;
        goto out;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        int in = has_input ? in_pipe[0] : null;
        int out = out_pipe[1] >= 0 ? out_pipe[1] : null;
        int err = merge ? out_pipe[1] : err_pipe[1] >= 0 ? err_pipe[1] : null;
        if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
            dup2(err, 2) < 0) {
            int e = errno ? errno : EBADF;
            if (write(status_pipe[1], &e, sizeof(e)) < 0)
                _exit(127);
            _exit(127);
        }
        int e = exec_child(path, argv, envp, search);
        if (write(status_pipe[1], &e, sizeof(e)) < 0)
            _exit(127);
        _exit(127);
    }
    close_fd(&status_pipe[1]);
    close_fd(&in_pipe[0]);
    close_fd(&out_pipe[1]);
    close_fd(&err_pipe[1]);
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(status_pipe[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(child_errno)) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        /* glib's g_spawn message, as qemu-ga 10 passes it on. */
        ERR(rq, "Failed to execute child process \xe2\x80\x9c%s\xe2\x80\x9d (%s)", path,
            strerror(child_errno));
        p = NULL;
        goto out;
    }
    memset(p, 0, sizeof(*p));
    p->used = true;
    p->pid = pid;
    p->capture = capture;
    p->out.fd = out_pipe[0];
    p->err.fd = err_pipe[0];
    /* The agent's ends never block it (the child's stay blocking). */
    if (p->out.fd >= 0)
        fcntl(p->out.fd, F_SETFL, O_NONBLOCK);
    if (p->err.fd >= 0)
        fcntl(p->err.fd, F_SETFL, O_NONBLOCK);
    p->in_fd = in_pipe[1];
    out_pipe[0] = err_pipe[0] = in_pipe[1] = -1;
    if (p->in_fd >= 0) {
        fcntl(p->in_fd, F_SETFL, O_NONBLOCK);
        p->input = input;
        p->input_len = input_len;
        input = NULL;
        if (p->input_len == 0)
            close_fd(&p->in_fd);
    }
    buf_printf(rq->resp, "{\"pid\": %lld}", (long long)pid);
    result = return_reply(rq);
out:
    close_fd(&status_pipe[0]);
    close_fd(&status_pipe[1]);
    close_fd(&in_pipe[0]);
    close_fd(&in_pipe[1]);
    close_fd(&out_pipe[0]);
    close_fd(&out_pipe[1]);
    close_fd(&err_pipe[0]);
    close_fd(&err_pipe[1]);
    free(input);
    free(argv);
    free(args);
    free(envp);
    return result;
}

static int cmd_exec_status(struct request *rq)
{
    static const char *const names[] = {"pid", NULL};
    int64_t pid;
    if (args_allowed(rq, names) < 0 || arg_int(rq, "pid", true, &pid) < 0)
        return -1;
    struct proc *p = find_proc(rq->ag, pid);
    if (!p)
        return ERR(rq, "Invalid parameter 'pid'");
    bool exited = p->finished && (!p->capture || (p->out.fd < 0 && p->err.fd < 0));
    struct buf *r = rq->resp;
    buf_printf(r, "{\"exited\": %s", exited ? "true" : "false");
    if (exited) {
        if (WIFEXITED(p->status))
            buf_printf(r, ", \"exitcode\": %d", WEXITSTATUS(p->status));
        else if (WIFSIGNALED(p->status))
            buf_printf(r, ", \"signal\": %d", WTERMSIG(p->status));
        const struct {
            const char *name;
            struct stream *s;
        } streams[] = {{"out", &p->out}, {"err", &p->err}};
        for (size_t k = 0; k < 2; k++) {
            struct stream *s = streams[k].s;
            if (s->data.len == 0)
                continue;
            buf_printf(r, ", \"%s-data\": \"", streams[k].name);
            base64_encode(r, (const unsigned char *)s->data.data, s->data.len);
            buf_str(r, "\"");
            if (s->truncated)
                buf_printf(r, ", \"%s-truncated\": true", streams[k].name);
        }
    }
    buf_str(r, "}");
    if (exited)
        free_proc(p);
    return return_reply(rq);
}

/* files -------------------------------------------------------------------------------------- */

static int open_flags(const char *mode)
{
    static const struct {
        const char *forms[3];
        int flags;
    } modes[] = {
        {{"r", "rb", NULL}, O_RDONLY},
        {{"w", "wb", NULL}, O_WRONLY | O_CREAT | O_TRUNC},
        {{"a", "ab", NULL}, O_WRONLY | O_CREAT | O_APPEND},
        {{"r+", "rb+", "r+b"}, O_RDWR},
        {{"w+", "wb+", "w+b"}, O_RDWR | O_CREAT | O_TRUNC},
        {{"a+", "ab+", "a+b"}, O_RDWR | O_CREAT | O_APPEND},
    };
    for (size_t k = 0; k < sizeof(modes) / sizeof(modes[0]); k++)
        for (size_t f = 0; f < 3 && modes[k].forms[f]; f++)
            if (strcmp(modes[k].forms[f], mode) == 0)
                return modes[k].flags | O_NOCTTY | O_NONBLOCK | O_CLOEXEC;
    return -1;
}

static struct file *find_file(struct request *rq, int64_t handle)
{
    for (int k = 0; k < MAX_FILES; k++)
        if (rq->ag->files[k].used && rq->ag->files[k].handle == handle)
            return &rq->ag->files[k];
    error_reply(rq, "GenericError", "handle '%lld' has not been found", (long long)handle);
    return NULL;
}

static int cmd_file_open(struct request *rq)
{
    static const char *const names[] = {"path", "mode", NULL};
    const char *path = NULL, *mode = "r";
    if (args_allowed(rq, names) < 0 || arg_str(rq, "path", true, &path, NULL) < 0 ||
        arg_str(rq, "mode", false, &mode, NULL) < 0)
        return -1;
    int flags = open_flags(mode);
    if (flags < 0)
        return ERR(rq, "invalid file open mode '%s'", mode);
    struct file *slot = NULL;
    for (int k = 0; k < MAX_FILES && !slot; k++)
        if (!rq->ag->files[k].used)
            slot = &rq->ag->files[k];
    if (!slot)
        return ERR(rq, "too many open files (%d)", MAX_FILES);
    /* Created files get mode 0666 whatever the umask, as with qemu-ga. */
    int fd = open(path, flags | ((flags & O_CREAT) ? O_EXCL : 0), 0);
    bool created = fd >= 0 && (flags & O_CREAT);
    if (fd < 0 && errno == EEXIST)
        fd = open(path, flags & ~O_CREAT, 0);
    if (fd < 0)
        return ERR(rq, "failed to open file '%s' (mode: '%s'): %s", path, mode, strerror(errno));
    if (created && fchmod(fd, 0666) < 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return ERR(rq, "failed to set permission 0666 on new file '%s' (mode: '%s'): %s", path,
                   mode, strerror(e));
    }
    slot->used = true;
    slot->fd = fd;
    slot->handle = rq->ag->next_handle++;
    buf_printf(rq->resp, "%lld", (long long)slot->handle);
    return return_reply(rq);
}

static int cmd_file_close(struct request *rq)
{
    static const char *const names[] = {"handle", NULL};
    int64_t handle;
    if (args_allowed(rq, names) < 0 || arg_int(rq, "handle", true, &handle) < 0)
        return -1;
    struct file *f = find_file(rq, handle);
    if (!f)
        return -1;
    int rc = close(f->fd);
    memset(f, 0, sizeof(*f));
    if (rc < 0 && errno != EINTR)
        return ERR(rq, "failed to close handle: %s", strerror(errno));
    return return_reply(rq);
}

static int cmd_file_read(struct request *rq)
{
    static const char *const names[] = {"handle", "count", NULL};
    int64_t handle, count = READ_COUNT_DEFAULT;
    int has;
    if (args_allowed(rq, names) < 0 || arg_int(rq, "handle", true, &handle) < 0 ||
        (has = arg_int(rq, "count", false, &count)) < 0)
        return -1;
    struct file *f = find_file(rq, handle);
    if (!f)
        return -1;
    if (has && (count < 0 || count > READ_COUNT_MAX))
        return ERR(rq, "value '%lld' is invalid for argument count", (long long)count);
    unsigned char *data = malloc((size_t)count + 1);
    if (!data)
        die("out of memory");
    size_t got = 0;
    bool eof = false;
    while (got < (size_t)count) {
        ssize_t n = read(f->fd, data + got, (size_t)count - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0) {
            int e = errno;
            free(data);
            return ERR(rq, "failed to read file: %s", strerror(e));
        }
        if (n == 0) {
            eof = true;
            break;
        }
        got += (size_t)n;
    }
    struct buf *r = rq->resp;
    buf_printf(r, "{\"count\": %zu, \"buf-b64\": \"", got);
    base64_encode(r, data, got);
    buf_printf(r, "\", \"eof\": %s}", eof ? "true" : "false");
    free(data);
    return return_reply(rq);
}

static int cmd_file_write(struct request *rq)
{
    static const char *const names[] = {"handle", "buf-b64", "count", NULL};
    int64_t handle, count = 0;
    const char *b64 = NULL;
    size_t b64_len = 0;
    int has;
    if (args_allowed(rq, names) < 0 || arg_int(rq, "handle", true, &handle) < 0 ||
        arg_str(rq, "buf-b64", true, &b64, &b64_len) < 0 ||
        (has = arg_int(rq, "count", false, &count)) < 0)
        return -1;
    struct file *f = find_file(rq, handle);
    if (!f)
        return -1;
    const char *error = NULL;
    size_t len = 0;
    unsigned char *data = base64_decode(b64, b64_len, &len, &error);
    if (!data)
        return ERR(rq, "%s", error);
    if (!has) {
        count = (int64_t)len;
    } else if (count < 0 || (uint64_t)count > len) {
        free(data);
        return ERR(rq, "value '%lld' is invalid for argument count", (long long)count);
    }
    size_t done = 0;
    while (done < (size_t)count) {
        ssize_t n = write(f->fd, data + done, (size_t)count - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && done > 0)
            break;
        if (n < 0) {
            int e = errno;
            free(data);
            return ERR(rq, "failed to write to file: %s", strerror(e));
        }
        done += (size_t)n;
    }
    free(data);
    buf_printf(rq->resp, "{\"count\": %zu, \"eof\": false}", done);
    return return_reply(rq);
}

/* network interfaces ------------------------------------------------------------------------- */

/* The first line of a small /sys file, without its newline; false when it cannot be read. */
static bool read_sys_line(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    bool ok = fgets(out, (int)size, f) != NULL;
    fclose(f);
    if (ok)
        out[strcspn(out, "\n")] = 0;
    return ok;
}

static int netmask_prefix(const struct sockaddr *mask)
{
    const unsigned char *bytes;
    size_t len;
    if (mask->sa_family == AF_INET) {
        bytes = (const unsigned char *)&((const struct sockaddr_in *)(const void *)mask)->sin_addr;
        len = 4;
    } else {
        bytes = (const unsigned char *)&((const struct sockaddr_in6 *)(const void *)mask)->sin6_addr;
        len = 16;
    }
    int prefix = 0;
    for (size_t k = 0; k < len; k++)
        prefix += __builtin_popcount(bytes[k]);
    return prefix;
}

/* hardware-address as qemu-ga gives it (SIOCGIFHWADDR): the first 6 bytes, zeros for a device
 * without one (lo, tun); absent when the device cannot be asked. */
static void interface_hwaddr(struct buf *r, const char *name)
{
    char path[PATH_MAX], line[256];
    snprintf(path, sizeof(path), "/sys/class/net/%s/address", name);
    if (!read_sys_line(path, line, sizeof(line)))
        return;
    unsigned int mac[6] = {0};
    char *p = line;
    for (int k = 0; k < 6 && *p; k++) {
        char *end;
        unsigned long v = strtoul(p, &end, 16);
        if (end == p || v > 0xff)
            return;
        mac[k] = (unsigned int)v;
        p = *end == ':' ? end + 1 : end;
    }
    buf_printf(r, ", \"hardware-address\": \"%02x:%02x:%02x:%02x:%02x:%02x\"", mac[0], mac[1],
               mac[2], mac[3], mac[4], mac[5]);
}

/* statistics from /sys/class/net/NAME/statistics; absent when one cannot be read. */
static void interface_stats(struct buf *r, const char *name)
{
    static const struct {
        const char *file, *field;
    } stats[] = {
        {"rx_bytes", "rx-bytes"}, {"rx_packets", "rx-packets"}, {"rx_errors", "rx-errs"},
        {"rx_dropped", "rx-dropped"}, {"tx_bytes", "tx-bytes"}, {"tx_packets", "tx-packets"},
        {"tx_errors", "tx-errs"}, {"tx_dropped", "tx-dropped"},
    };
    unsigned long long values[sizeof(stats) / sizeof(stats[0])];
    for (size_t k = 0; k < sizeof(stats) / sizeof(stats[0]); k++) {
        char path[PATH_MAX], line[64], *end;
        snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/%s", name, stats[k].file);
        if (!read_sys_line(path, line, sizeof(line)))
            return;
        errno = 0;
        values[k] = strtoull(line, &end, 10);
        if (end == line || *end || errno)
            return;
    }
    buf_str(r, ", \"statistics\": {");
    for (size_t k = 0; k < sizeof(stats) / sizeof(stats[0]); k++)
        buf_printf(r, "%s\"%s\": %llu", k ? ", " : "", stats[k].field, values[k]);
    buf_str(r, "}");
}

/* qemu-ga's answer: one entry per interface in getifaddrs() order (name, hardware-address,
 * then its IPv4 and IPv6 addresses and statistics, both only for an interface with an
 * address). */
static int cmd_network_interfaces(struct request *rq)
{
    if (args_allowed(rq, NO_ARGS) < 0)
        return -1;
    struct ifaddrs *ifap;
    if (getifaddrs(&ifap) < 0)
        return ERR(rq, "getifaddrs failed: %s", strerror(errno));
    struct buf *r = rq->resp;
    buf_str(r, "[");
    bool first = true;
    for (struct ifaddrs *ifa = ifap; ifa; ifa = ifa->ifa_next) {
        bool seen = false;
        for (struct ifaddrs *e = ifap; e != ifa && !seen; e = e->ifa_next)
            seen = strcmp(e->ifa_name, ifa->ifa_name) == 0;
        if (seen)
            continue;
        buf_str(r, first ? "{\"name\": " : ", {\"name\": ");
        first = false;
        json_cstring(r, ifa->ifa_name);
        interface_hwaddr(r, ifa->ifa_name);
        bool any = false;
        for (struct ifaddrs *e = ifa; e; e = e->ifa_next) {
            if (strcmp(e->ifa_name, ifa->ifa_name) != 0 || !e->ifa_addr ||
                (e->ifa_addr->sa_family != AF_INET && e->ifa_addr->sa_family != AF_INET6))
                continue;
            bool v4 = e->ifa_addr->sa_family == AF_INET;
            char text[INET6_ADDRSTRLEN];
            const void *addr = v4
                ? (const void *)&((const struct sockaddr_in *)(const void *)e->ifa_addr)->sin_addr
                : (const void *)&((const struct sockaddr_in6 *)(const void *)e->ifa_addr)->sin6_addr;
            if (!inet_ntop(e->ifa_addr->sa_family, addr, text, sizeof(text))) {
                int err = errno;
                freeifaddrs(ifap);
                r->len = 0;
                return ERR(rq, "inet_ntop failed: %s", strerror(err));
            }
            int prefix = e->ifa_netmask && e->ifa_netmask->sa_family == e->ifa_addr->sa_family
                             ? netmask_prefix(e->ifa_netmask) : 0;
            buf_printf(r, "%s{\"ip-address-type\": \"%s\", \"ip-address\": \"%s\", "
                       "\"prefix\": %d}", any ? ", " : ", \"ip-addresses\": [",
                       v4 ? "ipv4" : "ipv6", text, prefix);
            any = true;
        }
        if (any) {
            buf_str(r, "]");
            interface_stats(r, ifa->ifa_name);
        }
        buf_str(r, "}");
    }
    buf_str(r, "]");
    freeifaddrs(ifap);
    return return_reply(rq);
}

static int cmd_shutdown(struct request *rq)
{
    static const char *const names[] = {"mode", NULL};
    const char *mode = "powerdown";
    if (args_allowed(rq, names) < 0 || arg_str(rq, "mode", false, &mode, NULL) < 0)
        return -1;
    int cmd;
    if (strcmp(mode, "powerdown") == 0)
        cmd = RB_POWER_OFF;
    else if (strcmp(mode, "halt") == 0)
        cmd = RB_HALT_SYSTEM;
    else if (strcmp(mode, "reboot") == 0)
        cmd = RB_AUTOBOOT;
    else
        return ERR(rq, "mode is invalid (valid values are: halt|powerdown|reboot");
    /* No response on success (success-response false): the VM going away is the answer. */
    rq->no_response = true;
    rq->ag->shutdown_requested = true;
    rq->ag->shutdown_cmd = cmd;
    return 0;
}

static const struct command {
    const char *name;
    int (*fn)(struct request *rq);
    bool success_response;
} COMMANDS[] = {
    {"guest-sync-delimited", cmd_sync_delimited, true},
    {"guest-sync", cmd_sync, true},
    {"guest-ping", cmd_ping, true},
    {"guest-info", cmd_info, true},
    {"guest-get-osinfo", cmd_osinfo, true},
    {"guest-exec", cmd_exec, true},
    {"guest-exec-status", cmd_exec_status, true},
    {"guest-file-open", cmd_file_open, true},
    {"guest-file-close", cmd_file_close, true},
    {"guest-file-read", cmd_file_read, true},
    {"guest-file-write", cmd_file_write, true},
    {"guest-network-get-interfaces", cmd_network_interfaces, true},
    {"guest-shutdown", cmd_shutdown, false},
};

static int cmd_info(struct request *rq)
{
    if (args_allowed(rq, NO_ARGS) < 0)
        return -1;
    struct buf *r = rq->resp;
    buf_str(r, "{\"version\": ");
    json_cstring(r, AGENT_VERSION);
    buf_str(r, ", \"supported_commands\": [");
    for (size_t k = 0; k < sizeof(COMMANDS) / sizeof(COMMANDS[0]); k++) {
        buf_printf(r, "%s{\"enabled\": true, \"name\": \"%s\", \"success-response\": %s}",
                   k ? ", " : "", COMMANDS[k].name,
                   COMMANDS[k].success_response ? "true" : "false");
    }
    buf_str(r, "]}");
    return return_reply(rq);
}

/* ------------------------------------------------------------------------------------------ */
/* Dispatch                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void dispatch(struct agent *ag, char *text, size_t len)
{
    struct jparser jp = {text, text + len, ag->nodes, 0, MAX_NODES, NULL};
    struct buf resp = {0};
    struct request rq = {ag, ag->nodes, -1, -1, &resp, false, false};
    int root = parse_value(&jp, 0);
    if (root >= 0) {
        skip_ws(&jp);
        if (jp.p != jp.end)
            jp.error = "JSON parse error, trailing characters";
    }
    if (root < 0 || jp.error) {
        ERR(&rq, "%s", jp.error ? jp.error : "JSON parse error");
        return;
    }
    if (ag->nodes[root].type != J_OBJECT) {
        ERR(&rq, "QMP input must be a JSON object");
        return;
    }
    const char *execute = NULL;
    for (int c = ag->nodes[root].first; c >= 0; c = ag->nodes[c].next) {
        if (strcmp(ag->nodes[c].key, "id") == 0)
            rq.id = c;
    }
    for (int c = ag->nodes[root].first; c >= 0; c = ag->nodes[c].next) {
        const struct jnode *m = &ag->nodes[c];
        if (strcmp(m->key, "execute") == 0) {
            if (m->type != J_STRING) {
                ERR(&rq, "QMP input member 'execute' must be a string");
                return;
            }
            execute = m->s;
        } else if (strcmp(m->key, "arguments") == 0) {
            if (m->type != J_OBJECT) {
                ERR(&rq, "QMP input member 'arguments' must be an object");
                return;
            }
            rq.args = c;
        } else if (strcmp(m->key, "id") != 0) {
            ERR(&rq, "QMP input member '%s' is unexpected", m->key);
            return;
        }
    }
    if (!execute) {
        ERR(&rq, "QMP input lacks member 'execute'");
        return;
    }
    for (size_t k = 0; k < sizeof(COMMANDS) / sizeof(COMMANDS[0]); k++) {
        if (strcmp(COMMANDS[k].name, execute) == 0) {
            COMMANDS[k].fn(&rq);
            buf_free(&resp);
            return;
        }
    }
    error_reply(&rq, "CommandNotFound", "The command %s has not been found", execute);
    buf_free(&resp);
}

/* ------------------------------------------------------------------------------------------ */
/* Framing: split the byte stream into JSON texts                                              */
/* ------------------------------------------------------------------------------------------ */

static void frame_reset(struct agent *ag)
{
    ag->req.len = 0;
    ag->depth = 0;
    ag->in_string = ag->escape = ag->started = ag->overflow = ag->garbage = false;
}

static void reply_plain_error(struct agent *ag, const char *desc)
{
    struct buf resp = {0};
    struct request rq = {ag, ag->nodes, -1, -1, &resp, false, false};
    ERR(&rq, "%s", desc);
}

static void frame_end(struct agent *ag)
{
    if (ag->overflow)
        reply_plain_error(ag, "JSON token size limit exceeded");
    else
        dispatch(ag, ag->req.data, ag->req.len);
    frame_reset(ag);
}

static void req_add(struct agent *ag, const unsigned char *data, size_t len)
{
    if (ag->overflow)
        return;
    if (ag->req.len + len > MAX_REQUEST) {
        ag->overflow = true;
        buf_free(&ag->req);
        return;
    }
    buf_add(&ag->req, data, len);
}

static void feed(struct agent *ag, const unsigned char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (ag->in_string && !ag->escape) {
            /* Inside a string only '"', '\\' and 0xFF matter: take the run before them whole
             * (base64 file data is nearly all of a big request). */
            size_t end = i;
            while (end < len && data[end] != '"' && data[end] != '\\' && data[end] != 0xFF)
                end++;
            if (end > i) {
                req_add(ag, data + i, end - i);
                i = end - 1;
                continue;
            }
        }
        unsigned char c = data[i];
        if (c == 0xFF) { /* resynchronisation: drop whatever was partial */
            frame_reset(ag);
            continue;
        }
        if (!ag->started) {
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
                if (ag->garbage) {
                    reply_plain_error(ag, "JSON parse error, stray characters");
                    ag->garbage = false;
                }
                continue;
            }
            if (c != '{' && c != '[') {
                ag->garbage = true;
                continue;
            }
            if (ag->garbage) {
                reply_plain_error(ag, "JSON parse error, stray characters");
                ag->garbage = false;
            }
            ag->started = true;
        }
        req_add(ag, &c, 1);
        if (ag->in_string) {
            if (ag->escape)
                ag->escape = false;
            else if (c == '\\')
                ag->escape = true;
            else if (c == '"')
                ag->in_string = false;
            continue;
        }
        if (c == '"') {
            ag->in_string = true;
        } else if (c == '{' || c == '[') {
            ag->depth++;
        } else if (c == '}' || c == ']') {
            if (--ag->depth == 0)
                frame_end(ag);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The poll loop                                                                               */
/* ------------------------------------------------------------------------------------------ */

static void reap(struct agent *ag)
{
    struct signalfd_siginfo info;
    while (read(ag->sigfd, &info, sizeof(info)) > 0) {
    }
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            break;
        struct proc *p = find_proc(ag, pid);
        if (p && !p->finished) {
            p->finished = true;
            p->status = status;
        }
    }
}

static void drain_stream(struct stream *s)
{
    char chunk[65536];
    ssize_t n = read(s->fd, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        close_fd(&s->fd);
        return;
    }
    size_t room = s->data.len < MAX_OUTPUT ? MAX_OUTPUT - s->data.len : 0;
    size_t keep = (size_t)n < room ? (size_t)n : room;
    if (keep)
        buf_add(&s->data, chunk, keep);
    if (keep < (size_t)n)
        s->truncated = true;
}

static void feed_stdin(struct proc *p)
{
    ssize_t n = write(p->in_fd, p->input + p->input_done, p->input_len - p->input_done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n < 0) { /* EPIPE: the process does not read its input */
        close_fd(&p->in_fd);
        return;
    }
    p->input_done += (size_t)n;
    if (p->input_done == p->input_len)
        close_fd(&p->in_fd);
}

static void now_plus_ms(struct timespec *t, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_nsec += (long)ms * 1000000L;
    while (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

static int ms_until(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms = (t->tv_sec - now.tv_sec) * 1000LL + (t->tv_nsec - now.tv_nsec) / 1000000L;
    return ms < 0 ? 0 : (int)ms;
}

static void read_port(struct agent *ag)
{
    unsigned char chunk[65536];
    ssize_t n = read(ag->in_fd, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        if (!ag->port_mode) {
            ag->stdin_eof = true;
            return;
        }
        /* No host on the other end of the port: a new one starts a new stream. */
        frame_reset(ag);
        ag->waiting_host = true;
        now_plus_ms(&ag->retry_at, PORT_RETRY_MS);
        return;
    }
    feed(ag, chunk, (size_t)n);
}

static void write_port(struct agent *ag)
{
    /* The virtio console driver takes at most 32 KiB per write. */
    size_t pending = ag->out.len - ag->out_head;
    size_t len = pending < 32768 ? pending : 32768;
    ssize_t n = write(ag->out_fd, ag->out.data + ag->out_head, len);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n < 0) {
        if (!ag->port_mode)
            die("write");
        ag->waiting_host = true;
        now_plus_ms(&ag->retry_at, PORT_RETRY_MS);
        return;
    }
    ag->out_head += (size_t)n;
    if (ag->out_head == ag->out.len) {
        ag->out.len = ag->out_head = 0;
    } else if (ag->out_head > (1u << 20) && ag->out_head > ag->out.len / 2) {
        buf_drop_front(&ag->out, ag->out_head); /* now and then, not per write */
        ag->out_head = 0;
    }
}

static void do_shutdown(struct agent *ag)
{
    if (!ag->port_mode) { /* testing on stdin/stdout: never power off the machine it runs on */
        fprintf(stderr, "kvmpy-ga: guest-shutdown ignored outside a port\n");
        ag->shutdown_requested = false;
        return;
    }
    sync();
    if (reboot(ag->shutdown_cmd) < 0)
        fprintf(stderr, "kvmpy-ga: reboot: %s\n", strerror(errno));
    ag->shutdown_requested = false;
}

static void run(struct agent *ag)
{
    enum { MAX_POLL = 3 + 3 * MAX_PROCS };
    struct pollfd fds[MAX_POLL];
    void *owner[MAX_POLL];
    for (;;) {
        if (ag->shutdown_requested)
            do_shutdown(ag);
        size_t unsent = ag->out.len - ag->out_head;
        if (ag->stdin_eof && unsent == 0)
            return;
        int n = 0, timeout = -1;
        if (ag->waiting_host) {
            timeout = ms_until(&ag->retry_at);
            if (timeout == 0)
                ag->waiting_host = false;
        }
        if (!ag->waiting_host && !ag->stdin_eof && unsent < OUTPUT_BACKLOG) {
            fds[n] = (struct pollfd){ag->in_fd, POLLIN, 0};
            owner[n++] = &ag->in_fd;
        }
        if (!ag->waiting_host && unsent) {
            fds[n] = (struct pollfd){ag->out_fd, POLLOUT, 0};
            owner[n++] = &ag->out_fd;
        }
        fds[n] = (struct pollfd){ag->sigfd, POLLIN, 0};
        owner[n++] = &ag->sigfd;
        for (int k = 0; k < MAX_PROCS; k++) {
            struct proc *p = &ag->procs[k];
            if (!p->used)
                continue;
            if (p->out.fd >= 0) {
                fds[n] = (struct pollfd){p->out.fd, POLLIN, 0};
                owner[n++] = &p->out;
            }
            if (p->err.fd >= 0) {
                fds[n] = (struct pollfd){p->err.fd, POLLIN, 0};
                owner[n++] = &p->err;
            }
            if (p->in_fd >= 0) {
                fds[n] = (struct pollfd){p->in_fd, POLLOUT, 0};
                owner[n++] = p;
            }
        }
        int ready = poll(fds, (nfds_t)n, timeout);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        for (int k = 0; k < n; k++) {
            if (!fds[k].revents)
                continue;
            if (owner[k] == &ag->in_fd) {
                read_port(ag);
            } else if (owner[k] == &ag->out_fd) {
                if (fds[k].revents & (POLLOUT | POLLERR))
                    write_port(ag);
                else if (ag->port_mode) { /* POLLHUP only: no host */
                    ag->waiting_host = true;
                    now_plus_ms(&ag->retry_at, PORT_RETRY_MS);
                }
            } else if (owner[k] == &ag->sigfd) {
                reap(ag);
            } else {
                for (int j = 0; j < MAX_PROCS; j++) {
                    struct proc *p = &ag->procs[j];
                    if (owner[k] == &p->out && p->out.fd == fds[k].fd)
                        drain_stream(&p->out);
                    else if (owner[k] == &p->err && p->err.fd == fds[k].fd)
                        drain_stream(&p->err);
                    else if (owner[k] == p && p->in_fd == fds[k].fd)
                        feed_stdin(p);
                }
            }
        }
    }
}


/* ------------------------------------------------------------------------------------------ */
/* --link-ports                                                                                */
/* ------------------------------------------------------------------------------------------ */

#define PORTS_CLASS "/sys/class/virtio-ports"
#define PORTS_DIR "/dev/virtio-ports"
#define PORT_HOOKS "/etc/virtio-ports"
#define MAX_HOOKS 64

struct linker {
    char started[MAX_HOOKS][NAME_MAX + 2];
    int nstarted;
};

static void start_hook(struct linker *lk, const char *name, const char *link)
{
    char hook[PATH_MAX];
    snprintf(hook, sizeof(hook), "%s/%s", PORT_HOOKS, name);
    if (access(hook, X_OK) != 0)
        return;
    for (int k = 0; k < lk->nstarted; k++)
        if (strcmp(lk->started[k], name) == 0)
            return;
    if (lk->nstarted < MAX_HOOKS)
        snprintf(lk->started[lk->nstarted++], NAME_MAX + 2, "%s", name);
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        signal(SIGCHLD, SIG_DFL); /* an ignored SIGCHLD would survive exec */
        execl(hook, hook, link, (char *)NULL);
        fprintf(stderr, "kvmpy-ga: %s: %s\n", hook, strerror(errno));
        _exit(127);
    }
    if (pid < 0)
        fprintf(stderr, "kvmpy-ga: fork for %s: %s\n", hook, strerror(errno));
}

/* A port name is one path component, as udev's $attr{name} is used. */
static bool good_port_name(const char *name)
{
    return name[0] && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 && !strchr(name, '/');
}

static void link_ports(struct linker *lk)
{
    DIR *dir = opendir(PORTS_CLASS);
    if (!dir)
        return;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.')
            continue;
        char path[PATH_MAX], name[NAME_MAX + 2];
        snprintf(path, sizeof(path), "%s/%s/name", PORTS_CLASS, entry->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue; /* no name (yet): the attribute comes with PORT_NAME */
        ssize_t n = read(fd, name, sizeof(name) - 1);
        close(fd);
        if (n <= 0)
            continue;
        name[n] = 0;
        name[strcspn(name, "\n")] = 0;
        if (!good_port_name(name))
            continue;
        char link[PATH_MAX], target[PATH_MAX], current[PATH_MAX];
        snprintf(link, sizeof(link), "%s/%s", PORTS_DIR, name);
        snprintf(target, sizeof(target), "../%s", entry->d_name);
        ssize_t len = readlink(link, current, sizeof(current) - 1);
        if (len < 0 || (size_t)len != strlen(target) || memcmp(current, target, (size_t)len)) {
            mkdir(PORTS_DIR, 0755);
            unlink(link);
            if (symlink(target, link) < 0) {
                fprintf(stderr, "kvmpy-ga: %s: %s\n", link, strerror(errno));
                continue;
            }
        }
        start_hook(lk, name, link);
    }
    closedir(dir);
}

static int link_ports_forever(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = SA_NOCLDWAIT; /* hooks are never waited for */
    sigaction(SIGCHLD, &sa, NULL);
    static struct linker lk;
    /* Listen first, then scan: a name that arrives in between is seen either way. */
    int sock = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
    struct sockaddr_nl addr;
    memset(&addr, 0, sizeof(addr));
    addr.nl_family = AF_NETLINK;
    addr.nl_groups = 1;
    if (sock < 0 || bind(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "kvmpy-ga: uevent socket: %s\n", strerror(errno));
        link_ports(&lk);
        return 1;
    }
    link_ports(&lk);
    for (;;) {
        char msg[8192];
        ssize_t n = recv(sock, msg, sizeof(msg) - 1, 0);
        if (n < 0) {
            if (errno == EINTR || errno == ENOBUFS) { /* ENOBUFS: events lost, rescan */
                link_ports(&lk);
                continue;
            }
            fprintf(stderr, "kvmpy-ga: uevent: %s\n", strerror(errno));
            return 1;
        }
        msg[n] = 0;
        /* "ACTION@DEVPATH\0KEY=VALUE\0...": only virtio-ports events matter. */
        for (ssize_t off = 0; off < n; off += (ssize_t)strlen(msg + off) + 1) {
            if (strcmp(msg + off, "SUBSYSTEM=virtio-ports") == 0) {
                link_ports(&lk);
                break;
            }
        }
    }
}

int main(int argc, char **argv)
{
    const char *path = DEFAULT_PORT;
    for (int k = 1; k < argc; k++) {
        if (strcmp(argv[k], "-p") == 0 && k + 1 < argc) {
            path = argv[++k];
        } else if (strcmp(argv[k], "--link-ports") == 0 && argc == 2) {
            return link_ports_forever();
        } else {
            fprintf(stderr, "usage: kvmpy-ga [-p PORT]  (default %s; '-': stdin/stdout)\n"
                            "       kvmpy-ga --link-ports\n", DEFAULT_PORT);
            return 2;
        }
    }
    static struct agent ag;
    ag.next_handle = FIRST_HANDLE;
    for (int k = 0; k < MAX_PROCS; k++)
        ag.procs[k].out.fd = ag.procs[k].err.fd = ag.procs[k].in_fd = -1;
    ag.nodes = calloc(MAX_NODES, sizeof(struct jnode));
    if (!ag.nodes)
        die("out of memory");
    if (strcmp(path, "-") == 0) {
        ag.in_fd = 0;
        ag.out_fd = 1;
        fcntl(0, F_SETFD, FD_CLOEXEC);
        fcntl(1, F_SETFD, FD_CLOEXEC);
    } else {
        ag.in_fd = ag.out_fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (ag.in_fd < 0)
            die(path);
        ag.port_mode = true;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL); /* children's statuses are collected, never discarded */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0)
        die("sigprocmask");
    ag.sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (ag.sigfd < 0)
        die("signalfd");
    run(&ag);
    return 0;
}
