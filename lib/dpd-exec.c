/*
 * dpd-exec: the last steps of starting one supervised process, for
 * dpd-workerd (diprocd/spawn.py, "How a process is started" in README.md).
 *
 * The worker starts it with posix_spawn, which already gave it a session of
 * its own (setsid: it leads its session and its process group), default
 * signal dispositions, an empty signal mask, and these descriptors:
 *
 *   0     /dev/null
 *   1, 2  the process's log file, opened by the worker with the user's rights
 *   3     the report pipe (the worker reads it to its end)
 *   4     the worker's journal, when the start is journalled
 *   5     the plan: a file of NUL-terminated fields, in this order:
 *           PLAN_VERSION, journal record (empty: no journal), chroot
 *           (empty: none), cwd, user (its name, for messages), uid (empty:
 *           stay who we are, and the next two are ignored), gid, groups
 *           (decimal gids separated by ","), umask (octal), the cgroup v2
 *           folder to be born in (empty: none; open as fd 6), the count of
 *           the other cgroup folders to join, those folders, the count of
 *           resource limits, each as four fields (RLIMIT_* number, soft,
 *           hard: decimal or "inf", and what an error calls it, e.g.
 *           "nofile [256, 512]"; empty for the worker's own nofile given
 *           back), program, argc, the argc arguments (argv[0] first), then
 *           the environment, one "NAME=value" a field, to the end of the
 *           file.
 *   6     the cgroup v2 folder to be born in, when the plan names one
 *
 * Then, in this order (the order of spawn.py's own child):
 *   signals       the C library's hidden ones back to default (the others
 *                 are posix_spawn's work)
 *   cgroup birth  with a folder to be born in: clone3(CLONE_INTO_CGROUP,
 *                 fd 6); the parent writes "P<pid>\n" on fd 3 and exits 0
 *                 (the child waits for that, so the report reads in
 *                 order), the child calls setsid (it leads its session and
 *                 group, as dpd-exec did) and goes on; where the kernel
 *                 cannot, no clone: the folder is joined below instead
 *   journal line  its pid and kernel start time (/proc/self/stat field 22),
 *                 read while /proc is still the host's
 *   cgroup        its pid written to each other folder's cgroup.procs
 *   chroot        when asked
 *   chdir         "/", then cwd: a relative cwd resolves inside the chroot
 *   limits        each setrlimit, in the plan's order (the worker puts its
 *                 own nofile first, so the spec's wins), while still root
 *   user          setgid, setgroups, setuid, when asked
 *   umask
 *   close fds     every descriptor but 0-4
 *   journal       the line of the journal-line step appended to fd 4 in
 *                 one write, so that no program ever runs unrecorded
 *   exec          execve(program, argv, environment)
 *
 * As "dpd-exec --serve" (serve() below), it is a server the worker runs for
 * its life, fd 3 a SOCK_SEQPACKET socket: for each message it clones a child
 * of the worker (CLONE_PARENT), born in the cgroup v2 folder where one is
 * sent, which puts the descriptors sent where they are listed above and goes
 * on from "signals" (the birth done); the server writes "\0P<pid>\n" on the
 * report pipe.
 *
 * Descriptors 3 and 4 are close-on-exec: a successful exec closes the report
 * pipe (the worker reads end of file: started) and this process's share of
 * the journal's open file, through which the worker's flock on it is held
 * until then (diprocd/ledger.py). Any failure writes "E<step>: <reason>" on
 * fd 3 and exits with status 127.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define PLAN_VERSION "dpd-exec plan 2"
#define REPORT_FD 3
#define JOURNAL_FD 4
#define PLAN_FD 5
#define CGROUP_FD 6
#define MAX_PLAN (64L * 1024 * 1024)

/* clone3(2), which older C libraries do not declare: the same number on
 * every architecture, and its arguments up to the cgroup field. */
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define CLONE_INTO_CGROUP_FLAG 0x200000000ULL
#define CLONE_PARENT_FLAG 0x00008000ULL

/* The server's socket, its hello, and how many descriptors a start has. */
#define SERVE_FD 3
#define SERVE_HELLO "dpd-exec serve 1"
#define SERVE_FDS 5

struct clone_arguments {
    unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal,
        stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

struct limit {
    int resource;
    struct rlimit value;
    const char *label;  /* what an error calls it; empty: none */
};

struct plan {
    const char *record, *chroot, *cwd, *user, *uid, *gid, *groups, *umask;
    const char *born, *program;
    const char **joined;
    unsigned long joined_count, limit_count;
    struct limit *limits;
    char **argv, **envp;
};

/* "E<step>: <reason>" on the report pipe, then exit 127. */
static void fail(const char *step, const char *detail, const char *reason)
{
    char text[4096];
    int length = snprintf(text, sizeof text, "E%s%s%s: %s", step,
                          detail ? " " : "", detail ? detail : "", reason);
    if (length > (int)sizeof text - 1)
        length = (int)sizeof text - 1;
    if (length > 0 && write(REPORT_FD, text, (size_t)length) < 0) {
        /* Nobody to tell: the exit status says it. */
    }
    _exit(127);
}

static void fail_errno(const char *step, const char *detail)
{
    fail(step, detail, strerror(errno));
}

/* The whole plan file, NUL-terminated; exits on failure. */
static char *read_plan(size_t *size)
{
    struct stat info;
    char *data;
    size_t done = 0;

    if (fstat(PLAN_FD, &info) != 0)
        fail_errno("plan", NULL);
    if (info.st_size < 1 || info.st_size > MAX_PLAN)
        fail("plan", NULL, "empty or too large");
    *size = (size_t)info.st_size;
    data = malloc(*size + 1);
    if (data == NULL)
        fail_errno("plan", NULL);
    while (done < *size) {
        ssize_t got = pread(PLAN_FD, data + done, *size - done, (off_t)done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            fail_errno("plan", NULL);
        if (got == 0)
            fail("plan", NULL, "shorter than its size");
        done += (size_t)got;
    }
    if (data[*size - 1] != '\0')
        fail("plan", NULL, "does not end with a NUL byte");
    data[*size] = '\0';
    return data;
}

/* The next field at *at (within end), moving *at past it. */
static const char *next_field(char **at, const char *end)
{
    char *field = *at;
    if (field >= end)
        fail("plan", NULL, "too few fields");
    *at = field + strlen(field) + 1;
    return field;
}

/* A decimal (base 10) or octal (base 8) number of the plan, whole. */
static unsigned long number(const char *text, int base, const char *what)
{
    char *rest;
    unsigned long value;
    errno = 0;
    value = strtoul(text, &rest, base);
    if (errno != 0 || rest == text || *rest != '\0' || text[0] == '-')
        fail("plan", what, "not a number");
    return value;
}

static rlim_t limit_value(const char *text)
{
    return strcmp(text, "inf") == 0 ? RLIM_INFINITY
                                    : (rlim_t)number(text, 10, "limit");
}

/* A count of the plan, no larger than its fields could be. */
static unsigned long count(char **at, const char *end, size_t size,
                           const char *what)
{
    unsigned long value = number(next_field(at, end), 10, what);
    if (value > size)
        fail("plan", what, "out of range");
    return value;
}

static void parse_plan(char *data, size_t size, struct plan *plan)
{
    char *at = data;
    const char *end = data + size;
    unsigned long argc, envc = 0, i;
    char *scan;

    if (strcmp(next_field(&at, end), PLAN_VERSION) != 0)
        fail("plan", NULL, "not a " PLAN_VERSION " (worker and dpd-exec "
             "of different versions)");
    plan->record = next_field(&at, end);
    plan->chroot = next_field(&at, end);
    plan->cwd = next_field(&at, end);
    plan->user = next_field(&at, end);
    plan->uid = next_field(&at, end);
    plan->gid = next_field(&at, end);
    plan->groups = next_field(&at, end);
    plan->umask = next_field(&at, end);
    plan->born = next_field(&at, end);
    plan->joined_count = count(&at, end, size, "cgroups");
    plan->joined = calloc(plan->joined_count + 1, sizeof *plan->joined);
    if (plan->joined == NULL)
        fail_errno("plan", NULL);
    for (i = 0; i < plan->joined_count; i++)
        plan->joined[i] = next_field(&at, end);
    plan->limit_count = count(&at, end, size, "limits");
    plan->limits = calloc(plan->limit_count + 1, sizeof *plan->limits);
    if (plan->limits == NULL)
        fail_errno("plan", NULL);
    for (i = 0; i < plan->limit_count; i++) {
        struct limit *one = &plan->limits[i];
        one->resource = (int)number(next_field(&at, end), 10, "limit");
        one->value.rlim_cur = limit_value(next_field(&at, end));
        one->value.rlim_max = limit_value(next_field(&at, end));
        one->label = next_field(&at, end);
    }
    plan->program = next_field(&at, end);
    argc = count(&at, end, size, "argc");
    if (argc < 1)
        fail("plan", "argc", "out of range");
    plan->argv = calloc(argc + 1, sizeof *plan->argv);
    if (plan->argv == NULL)
        fail_errno("plan", NULL);
    for (i = 0; i < argc; i++)
        plan->argv[i] = (char *)next_field(&at, end);
    for (scan = at; scan < end; scan += strlen(scan) + 1)
        envc++;
    plan->envp = calloc(envc + 1, sizeof *plan->envp);
    if (plan->envp == NULL)
        fail_errno("plan", NULL);
    for (i = 0; i < envc; i++)
        plan->envp[i] = (char *)next_field(&at, end);
}

/* "\n<pid> <ticks|-> <record>\n" (diprocd/ledger.py), or NULL when the start
 * is not journalled. An unreadable /proc gives "-", as in spawn.py. */
static char *journal_line(const char *record)
{
    char stat[1024], ticks[32] = "-", *line, *close_paren;
    unsigned long long start;
    size_t length;
    ssize_t got;
    int fd, field;

    if (record[0] == '\0')
        return NULL;
    fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        got = read(fd, stat, sizeof stat - 1);
        close(fd);
        stat[got > 0 ? got : 0] = '\0';
        /* The command name may hold spaces and ")": count from the last
         * ")". Field 3 (state) follows it; the start time is field 22. */
        close_paren = strrchr(stat, ')');
        if (close_paren != NULL) {
            char *at = close_paren + 1;
            for (field = 3; field < 22 && at != NULL; field++)
                at = strchr(at + 1, ' ');
            if (at != NULL && sscanf(at, " %llu", &start) == 1)
                snprintf(ticks, sizeof ticks, "%llu", start);
        }
    }
    length = strlen(record) + 64;
    line = malloc(length);
    if (line == NULL)
        fail_errno("journal", NULL);
    snprintf(line, length, "\n%ld %s %s\n", (long)getpid(), ticks, record);
    return line;
}

static void become_user(const struct plan *plan)
{
    gid_t *groups;
    size_t count = 0, i;
    const char *at;
    char *copy, *token, *save;

    if (plan->uid[0] == '\0')
        return;
    for (at = plan->groups; *at; at++)
        count += *at == ',';
    count += plan->groups[0] != '\0';
    groups = calloc(count + 1, sizeof *groups);
    copy = strdup(plan->groups);
    if (groups == NULL || copy == NULL)
        fail_errno("user", plan->user);
    for (i = 0, token = strtok_r(copy, ",", &save); token != NULL && i < count;
         token = strtok_r(NULL, ",", &save))
        groups[i++] = (gid_t)number(token, 10, "groups");
    if (setgid((gid_t)number(plan->gid, 10, "gid")) != 0
            || setgroups(i, groups) != 0
            || setuid((uid_t)number(plan->uid, 10, "uid")) != 0)
        fail_errno("user", plan->user);
}

/* posix_spawn leaves the C library's own signals (glibc's two below
 * SIGRTMIN) ignored, which an exec would keep and sigaction() refuses to
 * change; the kernel's call does it. A zeroed struct is SIG_DFL, no flags,
 * an empty mask, whatever the architecture's field order. */
static void default_hidden_signals(void)
{
#if defined(__SIGRTMIN) && defined(SYS_rt_sigaction)
    unsigned long long action[8] = {0};  /* larger than any kernel's */
    int sig;
    for (sig = __SIGRTMIN; sig < SIGRTMIN; sig++)
        if (syscall(SYS_rt_sigaction, sig, action, NULL, _NSIG / 8) != 0)
            fail_errno("signals", NULL);
#endif
}

/* Born in the cgroup v2 folder open as fd 6 (clone3 CLONE_INTO_CGROUP):
 * returns 1 in the child, once the parent has written "P<pid>\n" on the
 * report pipe (the parent then exits 0), or 0 without a child where the
 * kernel cannot (ENOSYS before Linux 5.7, EINVAL...): the caller joins the
 * folder through its cgroup.procs then, as spawn.py's fork path does. */
static int born_inside(void)
{
    struct clone_arguments args;
    int sync[2];
    long pid;
    char text[32], byte;
    int length;

    if (pipe2(sync, O_CLOEXEC) != 0)
        fail_errno("cgroup", NULL);
    memset(&args, 0, sizeof args);
    args.flags = CLONE_INTO_CGROUP_FLAG;
    args.exit_signal = SIGCHLD;
    args.cgroup = CGROUP_FD;
    pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) {
        close(sync[0]);
        close(sync[1]);
        return 0;
    }
    if (pid == 0) {
        /* The parent's report first: end of file once it exits. */
        close(sync[1]);
        while (read(sync[0], &byte, 1) < 0 && errno == EINTR)
            continue;
        close(sync[0]);
        if (setsid() < 0)
            fail_errno("setsid", NULL);
        return 1;
    }
    length = snprintf(text, sizeof text, "P%ld\n", pid);
    if (write(REPORT_FD, text, (size_t)length) != length) {
        kill((pid_t)pid, SIGKILL);  /* the worker would not know of it */
        _exit(127);
    }
    _exit(0);
}

/* Its own pid written to ``folder``/cgroup.procs. */
static void join_cgroup(const char *folder)
{
    char path[PATH_MAX + 32], pid[32], reason[PATH_MAX + 300];
    int fd, length;
    ssize_t wrote;

    snprintf(path, sizeof path, "%s/cgroup.procs", folder);
    length = snprintf(pid, sizeof pid, "%ld", (long)getpid());
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        wrote = -1;
    else {
        wrote = write(fd, pid, (size_t)length);
        if (wrote < 0) {
            int saved = errno;
            close(fd);
            errno = saved;
        } else
            close(fd);
    }
    if (wrote < 0) {
        snprintf(reason, sizeof reason, "%s: %s", path, strerror(errno));
        fail("cgroup", NULL, reason);
    }
}

/* Each limit of the plan; a refusal is worded as Python's
 * resource.setrlimit words it on spawn.py's fork path. */
static void set_limits(const struct plan *plan)
{
    unsigned long i;
    char reason[512];

    for (i = 0; i < plan->limit_count; i++) {
        const struct limit *one = &plan->limits[i];
        const char *why;
        if (setrlimit(one->resource, &one->value) == 0)
            continue;
        why = errno == EINVAL ? "current limit exceeds maximum limit"
            : errno == EPERM ? "not allowed to raise maximum limit"
            : strerror(errno);
        if (one->label[0] == '\0')
            fail("limits", NULL, why);
        snprintf(reason, sizeof reason, "%s: %s", one->label, why);
        fail("limits", NULL, reason);
    }
}

/* Close every descriptor from ``low`` up to ``max`` (the bound before the
 * limits step) where there is no close_range. */
static void close_from(int low, long max)
{
    long fd;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)low, ~0U, 0) == 0)
        return;
    if (errno != ENOSYS)
        fail_errno("close fds", NULL);
#endif
    for (fd = low; fd < max; fd++)
        close((int)fd);
}

/* From the plan to the exec, once descriptors 0-6 are in place;
 * ``in_folder``: the process already is in the plan's cgroup v2 folder
 * (born there by the server); else, with one, it is born there now. */
static void start_program(int in_folder)
{
    struct plan plan;
    size_t size, length;
    char *data, *line;
    long open_max = sysconf(_SC_OPEN_MAX);
    unsigned long i;

    if (fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) != 0)
        _exit(127);  /* no report pipe: nobody to tell */
    data = read_plan(&size);
    parse_plan(data, size, &plan);
    default_hidden_signals();
    if (plan.record[0] != '\0' && fcntl(JOURNAL_FD, F_SETFD, FD_CLOEXEC) != 0)
        fail_errno("journal", NULL);

    if (plan.born[0] != '\0' && !in_folder)
        in_folder = born_inside();
    line = journal_line(plan.record);
    if (plan.born[0] != '\0' && !in_folder)
        join_cgroup(plan.born);
    for (i = 0; i < plan.joined_count; i++)
        join_cgroup(plan.joined[i]);
    if (plan.chroot[0] != '\0' && chroot(plan.chroot) != 0)
        fail_errno("chroot", plan.chroot);
    if (chdir("/") != 0 || chdir(plan.cwd) != 0)
        fail_errno("chdir", plan.cwd);
    set_limits(&plan);
    become_user(&plan);
    umask((mode_t)number(plan.umask, 8, "umask"));
    close_from(line != NULL ? PLAN_FD : JOURNAL_FD, open_max);
    if (line != NULL) {
        ssize_t wrote;
        length = strlen(line);
        do
            wrote = write(JOURNAL_FD, line, length);
        while (wrote < 0 && errno == EINTR);
        if (wrote < 0)
            fail_errno("journal", NULL);
        if ((size_t)wrote != length)
            fail("journal", NULL, "short write");
    }
    execve(plan.program, plan.argv, plan.envp);
    fail_errno("exec", plan.program);
}

/* --- the server (dpd-exec --serve) ------------------------------------ */

/* The server's child: the received descriptors (log, report, plan, then
 * the journal and the cgroup folder where given, -1 where not) moved to
 * 1-6 (0 is the server's /dev/null), a session of its own, then the
 * program. Never returns. */
static void served_child(int *fds, int in_folder)
{
    static const int targets[SERVE_FDS] = {1, REPORT_FD, PLAN_FD, JOURNAL_FD,
                                           CGROUP_FD};
    int moved[SERVE_FDS], i;

    /* Above every target first: a received one may be numbered 4-6. */
    for (i = 0; i < SERVE_FDS; i++) {
        moved[i] = fds[i] < 0 ? -1 : fcntl(fds[i], F_DUPFD_CLOEXEC,
                                           CGROUP_FD + 1);
        if (fds[i] >= 0 && moved[i] < 0)
            _exit(127);
    }
    for (i = 0; i < SERVE_FDS; i++)
        if (moved[i] >= 0 && dup2(moved[i], targets[i]) < 0)
            _exit(127);
    if (dup2(1, 2) < 0)
        _exit(127);
    if (setsid() < 0)
        fail_errno("setsid", NULL);
    start_program(in_folder);
    _exit(127);
}

/* One start asked for: a child of the worker itself (CLONE_PARENT: the
 * worker, a child subreaper, reaps it and watches it by pidfd as its own),
 * born in its cgroup v2 folder where one is given and the kernel can;
 * "\0P<pid>\n" on its report pipe, before or after what the child writes
 * there (no wait: the worker finds the line after the NUL). */
static void serve_one(int *fds)
{
    struct clone_arguments args;
    char text[32];
    long pid;
    int length, in_folder = fds[4] >= 0;

    memset(&args, 0, sizeof args);
    args.flags = CLONE_PARENT_FLAG | (in_folder ? CLONE_INTO_CGROUP_FLAG : 0);
    /* No exit_signal with CLONE_PARENT: the server's own (SIGCHLD). */
    args.cgroup = in_folder ? (unsigned long long)fds[4] : 0;
    pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0 && in_folder && errno != EAGAIN && errno != ENOMEM) {
        /* No birth in that folder here: the child joins it instead. */
        in_folder = 0;
        args.flags = CLONE_PARENT_FLAG;
        args.cgroup = 0;
        pid = syscall(SYS_clone3, &args, sizeof args);
    }
    if (pid == 0)
        served_child(fds, in_folder);
    if (pid < 0) {
        char reason[300];
        length = snprintf(reason, sizeof reason, "Efork: %s", strerror(errno));
        if (length > (int)sizeof reason - 1)
            length = (int)sizeof reason - 1;
        if (write(fds[1], reason, (size_t)length) < 0) {
            /* the worker is gone: nobody to tell */
        }
        return;
    }
    /* After a NUL: the child may have written its error already. */
    length = snprintf(text, sizeof text, "%cP%ld\n", '\0', pid);
    if (write(fds[1], text, (size_t)length) != length)
        kill((pid_t)pid, SIGKILL);  /* the worker would not know of it */
}

/* Serve the worker on fd 3 (a SOCK_SEQPACKET socket): first SERVE_HELLO
 * once the kernel has clone3 (else exit 2: the worker starts dpd-exec for
 * each process instead), then one start per message: its data "L" (log, report,
 * plan) followed by "J" with a journal and "C" with a cgroup v2 folder, its
 * descriptors in that order (SCM_RIGHTS). End of file: the worker is
 * gone, exit 0. A message that is not one is dropped (its descriptors
 * closed). */
static int serve(void)
{
    static const char hello[] = SERVE_HELLO;
    char data[16];
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int) * SERVE_FDS)];
    } control;
    int fds[SERVE_FDS], got[SERVE_FDS], count, i;

    if (fcntl(SERVE_FD, F_SETFD, FD_CLOEXEC) != 0)
        return 1;
    if (syscall(SYS_clone3, NULL, 0) < 0 && errno == ENOSYS)
        return 2;
    if (write(SERVE_FD, hello, sizeof hello - 1) < 0)
        return 1;
    for (;;) {
        struct iovec io = {data, sizeof data};
        struct msghdr message;
        struct cmsghdr *part;
        ssize_t length;

        memset(&message, 0, sizeof message);
        message.msg_iov = &io;
        message.msg_iovlen = 1;
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
        length = recvmsg(SERVE_FD, &message, MSG_CMSG_CLOEXEC);
        if (length < 0 && errno == EINTR)
            continue;
        if (length <= 0)
            return 0;
        count = 0;
        for (part = CMSG_FIRSTHDR(&message); part != NULL;
             part = CMSG_NXTHDR(&message, part)) {
            int *at = (int *)CMSG_DATA(part);
            size_t n = (part->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            if (part->cmsg_level != SOL_SOCKET || part->cmsg_type != SCM_RIGHTS)
                continue;
            while (n-- > 0) {
                if (count < SERVE_FDS)
                    got[count++] = *at;
                else
                    close(*at);
                at++;
            }
        }
        for (i = 0; i < SERVE_FDS; i++)
            fds[i] = -1;
        if (length >= 1 && data[0] == 'L' && !(message.msg_flags & MSG_CTRUNC)) {
            int want = 3, next = 3;
            for (i = 1; i < length; i++)
                want += data[i] == 'J' || data[i] == 'C';
            if (want == count) {
                fds[0] = got[0];
                fds[1] = got[1];
                fds[2] = got[2];
                for (i = 1; i < length; i++) {
                    if (data[i] == 'J')
                        fds[3] = got[next++];
                    else if (data[i] == 'C')
                        fds[4] = got[next++];
                }
                serve_one(fds);
            }
        }
        for (i = 0; i < count; i++)
            close(got[i]);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--serve") == 0)
        return serve();
    start_program(0);
    return 127;
}
