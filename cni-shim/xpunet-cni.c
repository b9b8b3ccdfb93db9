/*
 * xpunet-cni shim: the CNI binary the container runtime execs, in C.
 *
 * It forwards the invocation to the resident xpunet CNI agent (thick-plugin
 * mode, docs/cni.md "Agent") and prints the agent's answer, so that an ADD
 * costs a process start of about a millisecond instead of a Python
 * interpreter's.  It does nothing else: whenever it cannot forward (VERSION,
 * stdin that is not a JSON object, no agent socket configured or present, the
 * agent failing), it execs the Python plugin with the same arguments,
 * environment and stdin, which then runs the verb itself exactly as before.
 *
 * Wire format to the agent (services/datapath/xpunet/datapath/cni/wire.py):
 *   request: every CNI_* variable as "KEY=VALUE\0", an empty entry "\0",
 *            then the network config (stdin) up to end of stream (we shut
 *            down our sending side);
 *   reply:   the exit code in decimal, "\n", then the bytes to print on
 *            stdout, up to end of stream.
 *
 * The agent socket comes from the network config's top-level "agentSocket"
 * (default /run/xpunet/cni-agent.sock, "" = do not forward) and the time
 * limit from "timeoutSeconds" (default 10) plus 5 s, like the Python plugin.
 *
 * Installed on a node (deploy/kustomize: copied to /opt/cni/bin by the
 * datapath's initContainer, linked statically) there is no Python plugin to
 * fall back to: then VERSION is answered here, and a verb that could not be
 * forwarded fails with the CNI error JSON naming the unreachable agent (code
 * 11, "try again later": the datapath may still be starting).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef XPUNET_CNI_FALLBACK
#define XPUNET_CNI_FALLBACK "/usr/local/bin/xpunet-cni-py"
#endif
#define DEFAULT_AGENT_SOCKET "/run/xpunet/cni-agent.sock"
#define MAX_INPUT (1 << 20)
#define MAX_REPLY ((1 << 20) + 64)
#define MAX_DEPTH 64

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static int buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL)
            return -1;
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* Read fd to end of stream; -1 on error or when more than max bytes come. */
static int read_all(int fd, struct buf *b, size_t max)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (b->len + (size_t)n > max) {
            errno = EFBIG;
            return -1;
        }
        if (buf_add(b, chunk, (size_t)n) < 0)
            return -1;
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* -- the Python plugin, for everything the shim does not forward ---------------------------- */

static const char *fallback_path(void)
{
    const char *py = getenv("XPUNET_CNI_FALLBACK");
    return py != NULL && *py ? py : XPUNET_CNI_FALLBACK;
}

/* Why the verb was not forwarded, when the agent was meant to run it ("" otherwise). */
static char agent_problem[512];

/* s as a JSON string body (quotes, backslashes and control characters escaped). */
static void print_json_text(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
}

/* The CNI error for a Python plugin that cannot be exec'ed (err: execv's errno), then exit 1. */
static void no_python(const char *py, int err)
{
    if (agent_problem[0] != '\0') {
        /* CNI code 11, try again later: the agent comes back with the datapath. */
        printf("{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"xpunet-cni: datapath agent unreachable: ");
        print_json_text(agent_problem);
        printf("\",\"details\":\"no local plugin to run the verb instead (");
        print_json_text(py);
        printf(": %s); is the xpunet datapath running on this node?\"}\n", strerror(err));
        fprintf(stderr, "xpunet-cni: datapath agent unreachable: %s; cannot exec %s: %s\n", agent_problem, py,
                strerror(err));
    } else {
        printf("{\"cniVersion\":\"1.1.0\",\"code\":5,\"msg\":\"xpunet-cni: cannot run the plugin ");
        print_json_text(py);
        printf(": %s\"}\n", strerror(err));
        fprintf(stderr, "xpunet-cni: cannot exec %s: %s\n", py, strerror(err));
    }
    fflush(stdout);
    exit(1);
}

/* Exec the Python plugin with our stdin (already read) on its stdin.  Never returns. */
static void run_python(char **argv, const struct buf *in)
{
    const char *py = fallback_path();
    int fd = memfd_create("xpunet-cni-stdin", 0);
    if (fd < 0 || write_all(fd, in->data ? in->data : "", in->len) < 0 || lseek(fd, 0, SEEK_SET) < 0 ||
        dup2(fd, 0) < 0) {
        fprintf(stderr, "xpunet-cni: cannot pass stdin to %s: %s\n", py, strerror(errno));
    }
    if (fd > 0)
        close(fd);
    argv[0] = (char *)py;
    execv(py, argv);
    no_python(py, errno); /* the runtime must get an error JSON */
}

/* -- just enough JSON to find two top-level keys of the network config ----------------------- */

struct scan {
    const char *p, *end;
};

static void ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* A string at s->p ('"').  Decoded into out (if given, NUL-terminated) when it fits and has only
 * the simple escapes; *exact is cleared otherwise.  -1 when malformed. */
static int scan_string(struct scan *s, char *out, size_t cap, int *exact)
{
    size_t n = 0;
    s->p++;
    while (s->p < s->end) {
        char c = *s->p++;
        if (c == '"') {
            if (out != NULL)
                out[n < cap ? n : 0] = '\0';
            return 0;
        }
        if ((unsigned char)c < 0x20)
            return -1;
        if (c == '\\') {
            if (s->p >= s->end)
                return -1;
            char e = *s->p++;
            switch (e) {
            case '"': case '\\': case '/': c = e; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                for (int i = 0; i < 4; i++, s->p++)
                    if (s->p >= s->end || !strchr("0123456789abcdefABCDEF", *s->p) || *s->p == '\0')
                        return -1;
                if (exact != NULL)
                    *exact = 0; /* not decoded here: the Python plugin will deal with it */
                continue;
            default:
                return -1;
            }
        }
        if (out != NULL) {
            if (n + 1 < cap)
                out[n++] = c;
            else if (exact != NULL)
                *exact = 0;
        }
    }
    return -1;
}

static int skip_value(struct scan *s, int depth);

static int skip_container(struct scan *s, int depth, char close, int members)
{
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        ws(s);
        if (members) {
            if (s->p >= s->end || *s->p != '"' || scan_string(s, NULL, 0, NULL) < 0)
                return -1;
            ws(s);
            if (s->p >= s->end || *s->p++ != ':')
                return -1;
        }
        if (skip_value(s, depth + 1) < 0)
            return -1;
        ws(s);
        if (s->p >= s->end)
            return -1;
        char c = *s->p++;
        if (c == close)
            return 0;
        if (c != ',')
            return -1;
    }
}

static int skip_value(struct scan *s, int depth)
{
    ws(s);
    if (s->p >= s->end || depth > MAX_DEPTH)
        return -1;
    switch (*s->p) {
    case '"':
        return scan_string(s, NULL, 0, NULL);
    case '{':
        return skip_container(s, depth, '}', 1);
    case '[':
        return skip_container(s, depth, ']', 0);
    default: {
        const char *start = s->p;
        while (s->p < s->end && strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.",
                                       *s->p) != NULL && *s->p != '\0')
            s->p++;
        return s->p > start ? 0 : -1;
    }
    }
}

/* 1 with the agent socket and time limit when the config says to forward; 0 when the Python plugin
 * must run the verb (not a JSON object, agentSocket "" or of a type or form we do not take). */
static int forwarding(const struct buf *in, char *path, size_t cap, double *timeout)
{
    struct scan s = {in->data, in->data + in->len};
    int have_path = 1, ok = 1;
    snprintf(path, cap, "%s", DEFAULT_AGENT_SOCKET);
    *timeout = 10.0;
    if (in->len == 0 || memchr(in->data, '\0', in->len) != NULL)
        return 0;
    ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return 0;
    s.p++;
    ws(&s);
    if (s.p < s.end && *s.p == '}')
        s.p++;
    else
        for (;;) {
            char key[32];
            int exact = 1;
            ws(&s);
            if (s.p >= s.end || *s.p != '"' || scan_string(&s, key, sizeof key, &exact) < 0)
                return 0;
            ws(&s);
            if (s.p >= s.end || *s.p++ != ':')
                return 0;
            ws(&s);
            if (exact && strcmp(key, "agentSocket") == 0) {
                int exact_value = 1;
                if (s.p >= s.end || *s.p != '"') {
                    ok = 0;
                    if (skip_value(&s, 1) < 0)
                        return 0;
                } else {
                    if (scan_string(&s, path, cap, &exact_value) < 0)
                        return 0;
                    have_path = exact_value && path[0] != '\0';
                }
            } else if (exact && strcmp(key, "timeoutSeconds") == 0) {
                const char *start = s.p;
                if (skip_value(&s, 1) < 0)
                    return 0;
                char num[64];
                size_t n = (size_t)(s.p - start);
                char *end = NULL;
                if (n == 0 || n >= sizeof num || !strchr("-0123456789", *start)) {
                    ok = 0; /* not a number (a bool, a string): the Python plugin decides */
                } else {
                    memcpy(num, start, n);
                    num[n] = '\0';
                    *timeout = strtod(num, &end);
                    if (end == NULL || *end != '\0')
                        ok = 0;
                }
            } else if (skip_value(&s, 1) < 0) {
                return 0;
            }
            ws(&s);
            if (s.p >= s.end)
                return 0;
            char c = *s.p++;
            if (c == '}')
                break;
            if (c != ',')
                return 0;
        }
    ws(&s);
    return s.p == s.end && ok && have_path;
}

/* -- talking to the agent --------------------------------------------------------------------- */

/* 0 with the exit code and output in reply; -1 with errno, or a message in *why. */
static int ask_agent(const char *path, double timeout, const struct buf *in, struct buf *reply, const char **why)
{
    struct buf req = {0};
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        *why = "socket path too long";
        return -1;
    }
    strcpy(addr.sun_path, path);
    for (char **e = environ; *e != NULL; e++)
        if (strncmp(*e, "CNI_", 4) == 0 && buf_add(&req, *e, strlen(*e) + 1) < 0)
            return -1;
    if (buf_add(&req, "", 1) < 0 || buf_add(&req, in->data, in->len) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (timeout < 0)
        timeout = 0;
    struct timeval tv = {.tv_sec = (time_t)timeout, .tv_usec = (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
    int rc = -1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 &&
        connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && write_all(fd, req.data, req.len) == 0 &&
        shutdown(fd, SHUT_WR) == 0 && read_all(fd, reply, MAX_REPLY) == 0)
        rc = 0;
    int err = errno;
    close(fd);
    free(req.data);
    errno = err;
    return rc;
}

int main(int argc, char **argv)
{
    (void)argc;
    struct buf in = {0};
    const char *command = getenv("CNI_COMMAND");
    if (argv[1] != NULL || command == NULL || strcmp(command, "VERSION") == 0) {
        /* `xpunet-cni agent ...`, VERSION, no command: all the Python plugin's.  Its stdin is ours. */
        const char *py = fallback_path();
        argv[0] = (char *)py;
        execv(py, argv);
        if (argv[1] == NULL && command != NULL) {
            /* VERSION on a node without the Python plugin: the versions the agent's verbs speak. */
            printf("{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n");
            return 0;
        }
        no_python(py, errno);
    }
    if (read_all(0, &in, MAX_INPUT) < 0)
        run_python(argv, &in); /* an oversized config: let the plugin read what it can and report */
    char path[sizeof ((struct sockaddr_un *)0)->sun_path + 1];
    double timeout;
    struct stat st;
    if (!forwarding(&in, path, sizeof path, &timeout))
        run_python(argv, &in);
    if (stat(path, &st) != 0) {
        snprintf(agent_problem, sizeof agent_problem, "no agent socket at %s: %s", path, strerror(errno));
        run_python(argv, &in);
    }
    struct buf reply = {0};
    const char *why = NULL;
    if (ask_agent(path, timeout + 5.0, &in, &reply, &why) < 0) {
        snprintf(agent_problem, sizeof agent_problem, "agent at %s failed: %s", path, why ? why : strerror(errno));
        fprintf(stderr, "xpunet-cni: %s; running the verb here\n", agent_problem);
        run_python(argv, &in);
    }
    char *nl = reply.len ? memchr(reply.data, '\n', reply.len) : NULL;
    char *end = NULL;
    long code = -1;
    if (nl != NULL && nl != reply.data) {
        *nl = '\0';
        code = strtol(reply.data, &end, 10);
    }
    if (nl == NULL || end != nl || code < 0 || code > 255) {
        snprintf(agent_problem, sizeof agent_problem, "agent at %s failed: malformed reply", path);
        fprintf(stderr, "xpunet-cni: %s; running the verb here\n", agent_problem);
        run_python(argv, &in);
    }
    size_t out_len = reply.len - (size_t)(nl + 1 - reply.data);
    if (write_all(1, nl + 1, out_len) < 0) {
        fprintf(stderr, "xpunet-cni: writing the result failed: %s\n", strerror(errno));
        return 1;
    }
    return (int)code;
}
