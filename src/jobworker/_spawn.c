/* jobworker._spawn: start one job's process, and create its log.
 *
 * Why C: the child must join the job's cgroups *before* the user's program runs its
 * first instruction, and Python offers no safe hook between fork and exec in a threaded
 * process (preexec_fn runs Python code after fork, where another thread may have held
 * a lock).  Here the child runs only async-signal-safe system calls.
 *
 * The child is a clone(CLONE_VM | CLONE_VFORK | CLONE_FILES): it shares the worker's
 * memory and descriptor table, and the calling thread sleeps until it has executed the
 * program or failed.  Sharing the table is what lets the child create the job's log,
 * named after its own pid ({base}_{pid}.log; see create_log if that name is taken), in
 * the worker's table: the log exists, with its final name, before the program runs,
 * and a log that cannot be created means the program never runs.  (Before, the worker
 * created an unnamed O_TMPFILE and linked it once the pid was known: two metadata
 * operations where this is one.)  The kernel returns the pidfd (CLONE_PIDFD).
 *
 * The child, in order: creates the log (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600,
 * relative to the log directory's fd), takes a private copy of the descriptor table
 * with everything above stderr close-on-exec, leaves the worker's session (setsid),
 * joins each cgroup by writing "0" (itself) into its cgroup.procs (but the cgroup2 one
 * it may have been born in: see clone_into), points stdin at
 * /dev/null and stdout and stderr at the capture pipe, drops to the job's user if one
 * is given (supplementary groups, group, user: in that order, as only root may set the
 * first two), changes directory (with the job's own permissions), restores the fd limit
 * the host had, default signal dispositions and an empty mask, and executes the first
 * candidate path that works.  A failure is recorded as (stage, errno) in the plan,
 * which the child shares with the parent; the parent then reaps the child and removes
 * the log before returning.
 *
 * Every descriptor the worker keeps lives above stderr: a host that closed its 0-2 (a
 * daemon) would otherwise find a job's log or pidfd there, and its own print() would
 * write into that log.  The kernel gives out the lowest free number, so the log and the
 * pidfd are moved up at once when they land there (a dup and a close, only then).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
/* Headers older than the kernel: system calls numbered from 424 on (5.1) have one number
 * on every architecture, offset by 110 on alpha and by the ABI's base on mips. */
#if defined(__alpha__)
#define JW_NEW_SYSCALL(n) ((n) + 110)
#elif defined(__mips__)
#define JW_NEW_SYSCALL(n) (__NR_Linux + (n))
#else
#define JW_NEW_SYSCALL(n) (n)
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal JW_NEW_SYSCALL(424)
#endif
#ifndef SYS_close_range
#define SYS_close_range JW_NEW_SYSCALL(436)
#endif
#ifndef SYS_clone3
#define SYS_clone3 JW_NEW_SYSCALL(435)
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
/* 32-bit ids where the plain calls still take 16-bit ones (i386, arm). */
#ifdef SYS_setresuid32
#define JW_SYS_setgroups SYS_setgroups32
#define JW_SYS_setresgid SYS_setresgid32
#define JW_SYS_setresuid SYS_setresuid32
#else
#define JW_SYS_setgroups SYS_setgroups
#define JW_SYS_setresgid SYS_setresgid
#define JW_SYS_setresuid SYS_setresuid
#endif

enum {
    STAGE_PENDING = -1, /* the child has not got as far as exec (yet) */
    STAGE_OK = 0,
    STAGE_CGROUP = 1,
    STAGE_FDS = 2,
    STAGE_CWD = 3,
    STAGE_EXEC = 4,
    STAGE_LOG = 5,
    STAGE_GROUPS = 6,
    STAGE_GID = 7,
    STAGE_UID = 8,
    STAGE_DIED = 9,
    STAGE_PIDFD = 10,
};

/* Tests set these to take the paths of kernels without close_range, without
 * CLONE_PIDFD (which such kernels ignore rather than refuse), or without clone3's
 * CLONE_INTO_CGROUP. */
static int without_close_range, without_clone_pidfd, without_clone_into_cgroup;
/* Tests set this to have every start with a cgroup2 cgroup born in it, bursts too. */
static int always_clone_into_cgroup;
/* Set once clone3 was refused as unknown (ENOSYS: before 5.3, or a seccomp profile;
 * E2BIG or EINVAL: a kernel before 5.7, which knows no CLONE_INTO_CGROUP; EPERM: a
 * sandbox): from then on every start clones the old way. */
static int clone3_refused;

/* When the previous start with a cgroup began (CLOCK_MONOTONIC, ns).  A start that
 * comes within WARM_NS of it joins its cgroup2 cgroup by writing cgroup.procs, like the
 * v1 ones, instead of being born in it: see clone_into. */
static int64_t last_cgroup_start_ns;
#define WARM_NS 5000000LL

static int64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Log names tried in order before random ones: {base}_{pid}.log, .1.log ... .9.log. */
#define LOG_SEQUENTIAL 10
/* The child's stack: its frames are small (no recursion, no libc buffers). */
#define CHILD_STACK (64 * 1024)

struct plan {
    char **paths;   /* candidate executables, NULL-terminated */
    char **argv;
    char **envp;
    char **cgroups; /* cgroup.procs files, NULL-terminated */
    int into_cgroup; /* born in the cgroup of cgroups[0] (CLONE_INTO_CGROUP): skip it */
    const char *cwd;
    int out_fd;
    int max_fd;
    int low_end; /* > 0: out_fd is below it (a low slot) */
    int log_dir_fd;
    const char *log_base;
    int run_as; /* whether to change to uid/gid/groups */
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    size_t ngroups;
    long long nofile; /* >= 0: the soft RLIMIT_NOFILE the job gets */
    /* Written by the kernel (CLONE_PIDFD) before the child runs; -1 if it ignored that. */
    int pidfd;
    /* Written by the child (shared memory), read by the parent once clone returns. */
    int stage, err; /* what failed, if anything; STAGE_OK only while exec runs */
    int log_fd;
    char log_name[NAME_MAX + 1];
};

/* The parent reads this once clone returns, which CLONE_VFORK delays until the child
 * has executed the program or exited: if the child exited, this was written first.  So
 * no error pipe, and no wait for exec to close one (40 us here). */
static void report(struct plan *p, int stage, int err) {
    p->stage = stage;
    p->err = err;
}

static char *put_str(char *at, const char *end, const char *s) {
    while (*s && at < end) *at++ = *s++;
    return at;
}

static char *put_uint(char *at, const char *end, unsigned long v) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && at < end) *at++ = digits[--n];
    return at;
}

static char *put_hex64(char *at, const char *end, uint64_t v) {
    for (int shift = 60; shift >= 0 && at < end; shift -= 4)
        *at++ = "0123456789abcdef"[(v >> shift) & 0xf];
    return at;
}

/* fd, or a copy of it above stderr if it landed at 0-2 (see the module docstring);
 * -1 with errno set if it cannot be moved (it is closed then).  For the pidfd: the
 * child moves its log itself (create_log). */
static int above_stdio(int fd) {
    if (fd > 2) return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int err = errno;
    close(fd);
    errno = err;
    return moved;
}

static int random64(uint64_t *v) {
    for (;;) {
        long n = syscall(SYS_getrandom, v, sizeof *v, 0);
        if (n == (long)sizeof *v) return 0;
        if (n >= 0) errno = EIO; /* a short read of 8 bytes does not happen */
        else if (errno == EINTR) continue;
        return errno;
    }
}

/* In the child, still sharing the worker's descriptor table: the new log's fd lands in
 * the worker's table, and its name in the plan.  Returns 0 or an errno.
 *
 * O_EXCL never opens what exists, a symlink included: a stale log, a pid-reuse leftover
 * or a planted file makes us take the next name.  After {pid}.log and a few numbered
 * names, the names carry 64 random bits: in a directory others can write (/tmp),
 * whoever pre-creates names for the next pids must not be able to make every start
 * fail, so the search has no end, and names to plant cannot be guessed. */
static int create_log(struct plan *p) {
    unsigned long pid = (unsigned long)syscall(SYS_getpid);
    const char *end = p->log_name + sizeof p->log_name - 1;
    for (unsigned long n = 0;; n++) {
        char *at = put_str(p->log_name, end, p->log_base);
        at = put_str(at, end, "_");
        at = put_uint(at, end, pid);
        if (n >= LOG_SEQUENTIAL) {
            uint64_t r;
            int err = random64(&r);
            if (err) return err;
            at = put_str(at, end, ".");
            at = put_hex64(at, end, r);
        } else if (n) {
            at = put_str(at, end, ".");
            at = put_uint(at, end, n);
        }
        at = put_str(at, end, ".log");
        if (at == end) return ENAMETOOLONG;
        *at = 0;
        int fd = openat(p->log_dir_fd, p->log_name,
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            /* At once: from here on, a child that fails or is killed leaves the parent
             * an fd to close and a name to remove.  (The copy above stderr is made
             * before the original is closed, so the parent never closes a number that
             * is no longer the log's.) */
            p->log_fd = fd;
            if (fd <= 2) {
                int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                if (moved < 0) return errno;
                p->log_fd = moved;
                close(fd);
            }
            return 0;
        }
        if (errno != EEXIST) return errno;
    }
}

/* Kernels before 5.9 have no close_range: mark the child's fds above stderr
 * close-on-exec one by one, up to the size of its fd table (FDSize in
 * /proc/self/status), which bounds every open fd, whatever the fd limit says (the limit
 * may be a million, or have been lowered below fds opened before).  Only without /proc,
 * up to the fd limit.  (Listing /proc/self/fd instead cost 2.3 us per open fd here,
 * against 0.15 us per number for fcntl.) */
static void cloexec_open_fds(int max_fd) {
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            const char *at = strstr(buf, "\nFDSize:");
            if (at) {
                int size = 0;
                for (at += 9; *at == ' ' || *at == '\t'; at++) {
                }
                while (*at >= '0' && *at <= '9' && size < INT_MAX / 10)
                    size = size * 10 + (*at++ - '0');
                if (size > 0) max_fd = size - 1;
            }
        }
    }
    for (fd = 3; fd <= max_fd; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* Runs in the child: it shares the parent's memory, so it writes nothing but its own
 * stack and the plan's result fields, and makes only system calls.  (Raw system calls
 * for the ids: in a process with threads, glibc's setuid() and friends lock the list of
 * its threads and signal each one to change ids too.  Here that list is the worker's,
 * and its lock may be held by a worker thread that is mid-way through creating a
 * thread: the child would wait for ever.) */
static void __attribute__((noinline)) child(struct plan *p) {
    int i, fd, err;

    if (p->pidfd < 0) {
        /* A kernel before 5.2 ignores CLONE_PIDFD: without a pidfd the worker could
         * only signal this process by pid, so it must not run at all. */
        report(p, STAGE_PIDFD, ENOSYS);
        return;
    }
    err = create_log(p);
    if (err) {
        report(p, STAGE_LOG, err);
        return;
    }
    /* Leave the shared table for a private copy before touching stdin/out/err, which
     * are the worker's too.  Everything the worker holds (other jobs' pipes, logs,
     * pidfds, this job's log) must not leak into the job: a leaked pipe write end would
     * keep another job's output open forever.
     *
     * With the low slot (see take_slot), the copy is of the fds below the slot
     * only: close_range(UNSHARE) over a range reaching past the last fd copies just
     * what lies below it.  Copying the whole table would touch every open file of the
     * worker, three per running job, at every start. */
    int copied = 0;
    if (!without_close_range) {
        if (p->low_end > 0 &&
            syscall(SYS_close_range, p->low_end, ~0U, CLOSE_RANGE_UNSHARE) == 0) {
            /* (CLOSE_RANGE_CLOEXEC came in 5.11, UNSHARE in 5.9.) */
            if (p->low_end > 3 &&
                syscall(SYS_close_range, 3, p->low_end - 1, CLOSE_RANGE_CLOEXEC) < 0) {
                for (fd = 3; fd < p->low_end; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
            }
            copied = 1;
        } else if (syscall(SYS_close_range, 3, ~0U,
                           CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC) == 0) {
            copied = 1;
        }
    }
    if (!copied) {
        if (unshare(CLONE_FILES) < 0) {
            report(p, STAGE_FDS, errno);
            return;
        }
        cloexec_open_fds(p->max_fd);
    }
    if (setsid() < 0) {
        report(p, STAGE_FDS, errno);
        return;
    }
    for (i = p->into_cgroup ? 1 : 0; p->cgroups[i]; i++) {
        fd = open(p->cgroups[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            report(p, STAGE_CGROUP, errno);
            return;
        }
        ssize_t n = write(fd, "0", 1);
        if (n != 1) {
            /* A write of nothing sets no errno: do not report a stale one. */
            report(p, STAGE_CGROUP, n < 0 ? errno : EIO);
            return;
        }
        close(fd);
    }
    /* out_fd is > 2 (the parent guarantees it), so these dup2s cannot clobber it. */
    fd = open("/dev/null", O_RDONLY);
    if (fd < 0 || dup2(fd, 0) < 0 || dup2(p->out_fd, 1) < 0 || dup2(p->out_fd, 2) < 0) {
        report(p, STAGE_FDS, errno);
        return;
    }
    if (fd > 2) close(fd);
    /* The log exists and the cgroups are joined, both as the worker's user: now drop
     * to the job's.  Groups first (only root may set them), then the group, then the
     * user, whose change takes away the right to make the other two. */
    if (p->run_as) {
        if (syscall(JW_SYS_setgroups, p->ngroups, p->groups) < 0) {
            report(p, STAGE_GROUPS, errno);
            return;
        }
        if (syscall(JW_SYS_setresgid, p->gid, p->gid, p->gid) < 0) {
            report(p, STAGE_GID, errno);
            return;
        }
        if (syscall(JW_SYS_setresuid, p->uid, p->uid, p->uid) < 0) {
            report(p, STAGE_UID, errno);
            return;
        }
    }
    if (p->cwd && chdir(p->cwd) < 0) {
        report(p, STAGE_CWD, errno);
        return;
    }
    /* The worker raised its own soft fd limit; the job gets the one the host had. */
    if (p->nofile >= 0) {
        struct rlimit lim;
        if (getrlimit(RLIMIT_NOFILE, &lim) < 0) {
            report(p, STAGE_FDS, errno);
            return;
        }
        rlim_t soft = (rlim_t)p->nofile;
        lim.rlim_cur = soft < lim.rlim_max ? soft : lim.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &lim) < 0) {
            report(p, STAGE_FDS, errno);
            return;
        }
    }
    /* Python ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec, and a job
     * must die of a broken pipe as it would under a shell. */
    for (i = 1; i < NSIG; i++) {
        struct sigaction sa;
        if (sigaction(i, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigemptyset(&sa.sa_mask);
            sigaction(i, &sa, NULL);
        }
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* The PATH search of glibc's execvp: a candidate that is missing (ENOENT, ENOTDIR)
     * or on a file system that failed (ESTALE, ENODEV, ETIMEDOUT) moves on to the next,
     * EACCES is remembered and moves on, anything else stops.  Unlike execvp, a file
     * the kernel cannot execute (ENOEXEC: no #! line, no known format) is an error,
     * not run again through /bin/sh, as in Python's subprocess: argv is executed, never
     * handed to a shell.
     *
     * The stage says OK only while execve runs: a child killed before (while joining
     * its cgroup, say) leaves it PENDING, and the parent takes that for the failure it
     * is, not for a started job. */
    int eacces = 0, broken = 0, missing = ENOENT;
    for (i = 0; p->paths[i]; i++) {
        p->stage = STAGE_OK;
        execve(p->paths[i], p->argv, p->envp);
        err = errno;
        p->stage = STAGE_PENDING;
        switch (err) {
        case EACCES:
            eacces = 1;
            break;
        case ENOENT:
        case ENOTDIR:
            missing = err;
            break;
        case ESTALE:
        case ENODEV:
        case ETIMEDOUT:
            broken = err;
            break;
        default:
            report(p, STAGE_EXEC, err);
            return;
        }
    }
    report(p, STAGE_EXEC, eacces ? EACCES : broken ? broken : missing);
}

/* A NULL-terminated vector of C strings pointing into bytes objects it holds (the
 * fs-encoded form of each str item), so no string is copied. */
struct strv {
    char **v;
    PyObject **held;
    Py_ssize_t n;
};

static void strv_free(struct strv *s) {
    for (Py_ssize_t i = 0; i < s->n; i++) Py_DECREF(s->held[i]);
    PyMem_Free(s->held);
    PyMem_Free(s->v);
    s->v = NULL;
    s->held = NULL;
    s->n = 0;
}

static int strv_from(PyObject *seq, struct strv *s) {
    /* A tuple of the items first: converting an item may run Python code (its
     * __fspath__) that changes a list under us; a tuple holds them all, unchanged. */
    PyObject *items = PySequence_Tuple(seq);
    if (!items) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    s->v = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    s->held = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    if (!s->v || !s->held) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(items, i), &b)) {
            Py_DECREF(items);
            return -1;
        }
        s->held[s->n++] = b;
        s->v[i] = PyBytes_AS_STRING(b);
    }
    Py_DECREF(items);
    return 0;
}

/* Each thread that spawns keeps one child stack: the thread sleeps while its child
 * runs, so one is enough, and mapping a fresh one per start would cost page faults and
 * a TLB shootdown each time.  Unmapped when the thread exits. */
static pthread_key_t stack_key;
static pthread_once_t stack_once = PTHREAD_ONCE_INIT;
static int stack_key_ok;

static void free_stack(void *stack) { munmap(stack, CHILD_STACK); }

static void make_stack_key(void) { stack_key_ok = pthread_key_create(&stack_key, free_stack) == 0; }

static char *child_stack(void) {
    pthread_once(&stack_once, make_stack_key);
    if (!stack_key_ok) {
        errno = EAGAIN;
        return NULL;
    }
    char *stack = pthread_getspecific(stack_key);
    if (!stack) {
        stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) return NULL;
        if (pthread_setspecific(stack_key, stack) != 0) {
            munmap(stack, CHILD_STACK);
            errno = ENOMEM;
            return NULL;
        }
    }
    return stack;
}

/* Two descriptors reserved when this module is imported, while the table is still
 * small, so their numbers are low: between starts both are one open file of a memfd
 * made for them; during a start the second holds the capture pipe.  One start at a
 * time uses them (others copy the whole table instead of waiting). */
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

static int slot_home = -1, slot_out = -1;
static dev_t slot_dev;
static ino_t slot_ino;
static int slot_busy; /* slot_out holds a pipe (or is about to): see after_fork_child */

/* Whether fd is (still) the slots' memfd.  Nobody else holds that file, so a matching
 * inode proves the number is still ours: no kcmp(2), which seccomp profiles (Docker's
 * default) refuse. */
static int is_slot_file(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_ino == slot_ino && st.st_dev == slot_dev;
}

static void reserve_slots(void) {
#ifdef SYS_memfd_create
    int tmp = (int)syscall(SYS_memfd_create, "jobworker-slot", MFD_CLOEXEC);
    if (tmp < 0) return;
    struct stat st;
    /* Above stderr even if this process has closed one of 0-2. */
    int home = fstat(tmp, &st) == 0 ? fcntl(tmp, F_DUPFD_CLOEXEC, 3) : -1;
    int out = home >= 0 ? fcntl(tmp, F_DUPFD_CLOEXEC, 3) : -1;
    close(tmp);
    if (home < 0 || out < 0) {
        if (home >= 0) close(home);
        return;
    }
    slot_dev = st.st_dev;
    slot_ino = st.st_ino;
    slot_home = home;
    slot_out = out;
#endif
}

/* Point the slot at out_fd; returns 1 if the plan uses it. */
static int take_slot(struct plan *p) {
    if (slot_home < 0 || pthread_mutex_trylock(&slots_lock) != 0) return 0;
    /* Still ours?  Code that closed them (a daemonizing close-all, say) may have had
     * the numbers reused for its own files, which dup3 would then replace.  Give the
     * slots up for good rather than risk that. */
    if (!is_slot_file(slot_home) || !is_slot_file(slot_out)) {
        slot_home = slot_out = -1;
        pthread_mutex_unlock(&slots_lock);
        return 0;
    }
    /* Set before the dup3, and seen by a fork in another thread from then on. */
    __atomic_store_n(&slot_busy, 1, __ATOMIC_SEQ_CST);
    /* dup3 keeps it close-on-exec: another thread's fork+exec must not inherit a job's
     * pipe. */
    if (dup3(p->out_fd, slot_out, O_CLOEXEC) < 0) {
        __atomic_store_n(&slot_busy, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&slots_lock);
        return 0;
    }
    p->out_fd = slot_out;
    p->low_end = slot_out + 1;
    return 1;
}

/* Drop the parent's reference to the pipe: its write end must close with the child. */
static void release_slot(void) {
    dup3(slot_home, slot_out, O_CLOEXEC);
    __atomic_store_n(&slot_busy, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&slots_lock);
}

/* A plain fork() in another thread (multiprocessing's default) while a start holds the
 * slot copies the job's pipe into a process that would keep it open: the job's output
 * would reach EOF only when that process exits.  Its copy of the slot goes back to the
 * memfd, and its lock is free (the thread that held it does not exist there).
 * (clone() for a job runs no fork handlers.) */
static void after_fork_child(void) {
    if (slot_busy && slot_out >= 0) dup3(slot_home, slot_out, O_CLOEXEC);
    slot_busy = 0;
    pthread_mutex_init(&slots_lock, NULL);
}

static int child_main(void *arg) {
    child(arg);
    _exit(127);
}

/* clone3(2) with CLONE_INTO_CGROUP (5.7): the child is born inside the job's cgroup2
 * cgroup, where writing its pid into cgroup.procs would migrate it, a write that takes
 * the kernel's cgroup-wide lock for migrations.  glibc has no wrapper that runs a
 * function on a new stack, so this is one: the child starts with the parent's
 * registers on the child stack, and must never return through the parent's frames
 * (they are the parent's, and it sleeps in them), so it calls fn and exits right there.
 * Only where written (x86_64); elsewhere every start takes clone() and the write. */
struct clone3_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    uint64_t set_tid, set_tid_size, cgroup;
};

#if defined(__x86_64__)
#define HAVE_CLONE3 1
/* Returns the child's pid, or -errno. */
static long clone3_call(struct clone3_args *args, int (*fn)(void *), void *arg) {
    long ret = SYS_clone3;
    /* Callee-saved registers: the system call leaves them alone, in both processes. */
    register long r_fn __asm__("r12") = (long)fn;
    register long r_arg __asm__("r13") = (long)arg;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     /* The child: its stack top (16-byte aligned) is the kernel's sp. */
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov %%eax, %%edi\n\t"
                     "mov $60, %%eax\n\t" /* exit */
                     "syscall\n\t"
                     "hlt\n\t"
                     "1:\n\t"
                     : "+a"(ret)
                     : "D"(args), "S"(sizeof *args), "r"(r_fn), "r"(r_arg)
                     : "rcx", "r11", "memory", "cc");
    return ret;
}
#else
#define HAVE_CLONE3 0
#endif

/* Start the child inside the cgroup2 directory cg_dir if this kernel can, and if
 * this start comes alone; returns the pid, or -1 (errno set) where it does not, and
 * then the caller clones the old way (a refusal particular to this cgroup then shows
 * up as the child's write's error).
 *
 * Which way is cheaper depends on what came just before.  A write into cgroup.procs
 * takes the kernel's write lock for migrations, which waits for an RCU grace period
 * (milliseconds) unless another migration took it moments before; a start that comes
 * alone, as most do, would wait that long.  Born in its cgroup, the child takes no such
 * lock, but the first task of a new cgroup costs the fork a few hundred microseconds
 * more here (measured: bench/README.md) than a migration while the lock is warm.  So
 * starts that follow each other closely (a burst: the previous one less than WARM_NS
 * ago) write, and keep the lock warm for the next; one that comes alone is born in its
 * cgroup.  A wrong guess costs time, never correctness. */
static pid_t clone_into(struct plan *p, const char *cg_dir, char *stack) {
#if HAVE_CLONE3
    if (!cg_dir || without_clone_into_cgroup || without_clone_pidfd ||
        __atomic_load_n(&clone3_refused, __ATOMIC_RELAXED)) {
        errno = EINVAL;
        return -1;
    }
    int64_t now = monotonic_ns();
    int64_t last = __atomic_exchange_n(&last_cgroup_start_ns, now, __ATOMIC_RELAXED);
    if (!always_clone_into_cgroup && last && now - last < WARM_NS) {
        errno = EAGAIN;
        return -1;
    }
    int cg = open(cg_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cg >= 0) cg = above_stdio(cg); /* another thread may be printing meanwhile */
    if (cg < 0) return -1;
    struct clone3_args args = {
        .flags = CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE_PIDFD | CLONE_INTO_CGROUP,
        .pidfd = (uint64_t)(uintptr_t)&p->pidfd,
        .exit_signal = SIGCHLD,
        .stack = (uint64_t)(uintptr_t)stack,
        .stack_size = CHILD_STACK,
        .cgroup = (uint64_t)cg,
    };
    p->into_cgroup = 1;
    long ret = clone3_call(&args, child_main, p);
    close(cg);
    if (ret >= 0) return (pid_t)ret;
    p->into_cgroup = 0;
    p->pidfd = -1; /* a clone3 that failed late may have written a number it took back */
    if (ret == -ENOSYS || ret == -E2BIG || ret == -EINVAL || ret == -EPERM)
        __atomic_store_n(&clone3_refused, 1, __ATOMIC_RELAXED);
    errno = (int)-ret;
    return -1;
#else
    (void)p;
    (void)cg_dir;
    (void)stack;
    errno = ENOSYS;
    return -1;
#endif
}

/* A child killed while it created its log (inside openat, or before it recorded the fd)
 * leaves the log on disk and its fd in the worker's table, unrecorded.  The name it was
 * trying is in the plan; the fds are found by the file's identity (a planted file of
 * that name is held by none of them).  Only on this rare path, so a walk of
 * /proc/self/fd is cheap enough. */
static void remove_unrecorded_log(struct plan *p) {
    struct stat log, st;
    if (!p->log_name[0] ||
        fstatat(p->log_dir_fd, p->log_name, &log, AT_SYMLINK_NOFOLLOW) < 0 ||
        !S_ISREG(log.st_mode))
        return;
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return;
    int found = 0, own = dirfd(dir);
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        int fd = atoi(e->d_name);
        if (fd != own && fstat(fd, &st) == 0 && st.st_dev == log.st_dev &&
            st.st_ino == log.st_ino) {
            close(fd);
            found = 1;
        }
    }
    closedir(dir);
    if (found) unlinkat(p->log_dir_fd, p->log_name, 0);
    p->log_fd = -1;
}

/* Take down a child that started but cannot be handed over, and its log. */
static void undo_start(struct plan *p, pid_t pid, int pidfd) {
    if (pidfd >= 0) syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    else kill(pid, SIGKILL); /* unreaped: the pid is still this child's */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    if (pidfd >= 0) close(pidfd);
    if (p->log_fd >= 0) {
        unlinkat(p->log_dir_fd, p->log_name, 0);
        close(p->log_fd);
        p->log_fd = -1;
    }
}

/* An id of uid_t/gid_t's range, (id_t)-1 excluded (it means "unchanged" to the kernel). */
static int parse_id(PyObject *o, unsigned int *id) {
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (v == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (v >= 0xffffffffUL) {
        PyErr_SetString(PyExc_OverflowError, "user and group ids must be below 2**32 - 1");
        return -1;
    }
    *id = (unsigned int)v;
    return 0;
}

static int parse_run_as(PyObject *o, struct plan *p, PyObject **groups_tuple) {
    unsigned int uid, gid, g;
    if (o == Py_None) return 0;
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 3) {
        PyErr_SetString(PyExc_TypeError, "run_as must be None or (uid, gid, groups)");
        return -1;
    }
    if (parse_id(PyTuple_GET_ITEM(o, 0), &uid) < 0 || parse_id(PyTuple_GET_ITEM(o, 1), &gid) < 0)
        return -1;
    *groups_tuple = PySequence_Tuple(PyTuple_GET_ITEM(o, 2));
    if (!*groups_tuple) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(*groups_tuple);
    p->groups = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
    if (!p->groups) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_id(PyTuple_GET_ITEM(*groups_tuple, i), &g) < 0) return -1;
        p->groups[i] = (gid_t)g;
    }
    p->run_as = 1;
    p->uid = (uid_t)uid;
    p->gid = (gid_t)gid;
    p->ngroups = (size_t)n;
    return 0;
}

PyDoc_STRVAR(spawn_doc,
"spawn(paths, argv, envp, cwd, out_fd, cgroup_procs, cgroup2_dir, log_dir_fd, log_base,\n"
"      run_as, nofile) -> (pid, pidfd, log_fd, log_name, stage, errno)\n\n"
"Start a process as described in the module docstring.  cgroup2_dir is None or the\n"
"cgroup2 directory of cgroup_procs[0]: the child is started inside it where the kernel\n"
"can (clone3 with CLONE_INTO_CGROUP) and joins only the others.  run_as is None or\n"
"(uid, gid, groups); nofile is the soft RLIMIT_NOFILE the job gets, or -1 to leave it.\n"
"On success stage is 0, pidfd refers to the new, unreaped child and log_fd (write-only,\n"
"close-on-exec) to its new log, named log_name (bytes) in the directory log_dir_fd;\n"
"both are above 2.  Otherwise the child was reaped and its log removed already, the\n"
"other fields are -1 (and b''), and (stage, errno) say what failed: see the STAGE_\n"
"constants.  For STAGE_DIED (the child died before it could execute) errno is the\n"
"signal that killed it, or 0.");

static PyObject *spawn(PyObject *self, PyObject *args) {
    PyObject *paths_o, *argv_o, *envp_o, *cwd_o, *cg_o, *cg2_o, *base_o, *run_as_o;
    int out_fd, log_dir_fd;
    long long nofile;
    if (!PyArg_ParseTuple(args, "OOOOiOOiOOL", &paths_o, &argv_o, &envp_o, &cwd_o, &out_fd,
                          &cg_o, &cg2_o, &log_dir_fd, &base_o, &run_as_o, &nofile))
        return NULL;
    if (out_fd <= 2) {
        PyErr_SetString(PyExc_ValueError, "out_fd must be greater than 2");
        return NULL;
    }

    struct plan p = {0};
    struct strv paths = {0}, argv = {0}, envp = {0}, cgroups = {0};
    PyObject *cwd_b = NULL, *cg2_b = NULL, *base_b = NULL, *groups_t = NULL, *result = NULL;
    const char *cg2_dir = NULL;
    p.out_fd = out_fd;
    p.log_dir_fd = log_dir_fd;
    p.log_fd = -1;
    p.nofile = nofile;
    if (strv_from(paths_o, &paths) < 0 || strv_from(argv_o, &argv) < 0 ||
        strv_from(envp_o, &envp) < 0 || strv_from(cg_o, &cgroups) < 0)
        goto done;
    p.paths = paths.v;
    p.argv = argv.v;
    p.envp = envp.v;
    p.cgroups = cgroups.v;
    if (cwd_o != Py_None) {
        if (!PyUnicode_FSConverter(cwd_o, &cwd_b)) goto done;
        p.cwd = PyBytes_AS_STRING(cwd_b);
    }
    if (cg2_o != Py_None) {
        if (!PyUnicode_FSConverter(cg2_o, &cg2_b)) goto done;
        if (cgroups.n == 0) {
            PyErr_SetString(PyExc_ValueError, "cgroup2_dir needs its cgroup.procs first");
            goto done;
        }
        cg2_dir = PyBytes_AS_STRING(cg2_b);
    }
    if (!PyUnicode_FSConverter(base_o, &base_b)) goto done;
    p.log_base = PyBytes_AS_STRING(base_b);
    if (parse_run_as(run_as_o, &p, &groups_t) < 0) goto done;
    char *stack = child_stack();
    if (!stack) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    /* Only where /proc/self/status cannot tell the fd table's size (see
     * cloexec_open_fds). */
    long open_max = sysconf(_SC_OPEN_MAX);
    p.max_fd = open_max > 0 && open_max <= INT_MAX ? (int)(open_max - 1) : INT_MAX - 1;

    pid_t pid;
    int saved_errno = 0, slot, status = 0;
    int flags = CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD;
    if (!without_clone_pidfd) flags |= CLONE_PIDFD;
    sigset_t all, old;
    p.pidfd = -1;
    p.stage = STAGE_PENDING;
    Py_BEGIN_ALLOW_THREADS
    slot = take_slot(&p);
    /* No signal handler of the parent may run in the child, which shares its memory;
     * the child resets dispositions before it unblocks. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone_into(&p, cg2_dir, stack);
    if (pid < 0) pid = clone(child_main, stack + CHILD_STACK, flags, &p, &p.pidfd);
    saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (slot) release_slot();
    if (pid > 0 && p.stage != STAGE_OK) {
        /* The child failed, or died, before exec: reap it, and remove its log, before
         * saying so. */
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        if (p.pidfd >= 0) close(p.pidfd);
        if (p.stage == STAGE_PENDING) {
            remove_unrecorded_log(&p);
            p.stage = STAGE_DIED;
            p.err = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        } else if (p.log_fd >= 0) {
            unlinkat(log_dir_fd, p.log_name, 0);
            close(p.log_fd);
        }
    } else if (pid > 0 && p.pidfd <= 2) {
        int moved = above_stdio(p.pidfd);
        if (moved < 0) {
            saved_errno = errno;
            undo_start(&p, pid, -1);
            pid = -1;
        } else {
            p.pidfd = moved;
        }
    }
    Py_END_ALLOW_THREADS

    if (pid < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (p.stage != STAGE_OK) {
        result = Py_BuildValue("(iiiyii)", -1, -1, -1, "", p.stage, p.err);
    } else {
        result = Py_BuildValue("(iiiyii)", (int)pid, p.pidfd, p.log_fd, p.log_name, STAGE_OK, 0);
        /* No way to hand the job over: take it down rather than leak it. */
        if (!result) undo_start(&p, pid, p.pidfd);
    }

done:
    Py_XDECREF(cwd_b);
    Py_XDECREF(cg2_b);
    Py_XDECREF(base_b);
    Py_XDECREF(groups_t);
    PyMem_Free(p.groups);
    strv_free(&paths);
    strv_free(&argv);
    strv_free(&envp);
    strv_free(&cgroups);
    return result;
}

static PyObject *set_without_close_range(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    without_close_range = on;
    Py_RETURN_NONE;
}

static PyObject *set_without_clone_pidfd(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    without_clone_pidfd = on;
    Py_RETURN_NONE;
}

static PyObject *set_without_clone_into_cgroup(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    without_clone_into_cgroup = on;
    Py_RETURN_NONE;
}

static PyObject *set_always_clone_into_cgroup(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    always_clone_into_cgroup = on;
    Py_RETURN_NONE;
}

static PyObject *clone_into_cgroup_usable(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(HAVE_CLONE3 && !without_clone_into_cgroup &&
                           !__atomic_load_n(&clone3_refused, __ATOMIC_RELAXED));
}

static PyObject *slots(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(ii)", slot_home, slot_out);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"set_without_close_range", set_without_close_range, METH_O,
     "set_without_close_range(on): start as on kernels without close_range (for tests)."},
    {"set_without_clone_pidfd", set_without_clone_pidfd, METH_O,
     "set_without_clone_pidfd(on): start as on kernels that ignore CLONE_PIDFD (for tests)."},
    {"set_without_clone_into_cgroup", set_without_clone_into_cgroup, METH_O,
     "set_without_clone_into_cgroup(on): start as on kernels without clone3's\n"
     "CLONE_INTO_CGROUP, joining every cgroup by writing cgroup.procs (for tests)."},
    {"set_always_clone_into_cgroup", set_always_clone_into_cgroup, METH_O,
     "set_always_clone_into_cgroup(on): start every child with a cgroup2 cgroup inside it,\n"
     "those of a burst of starts too (for tests)."},
    {"clone_into_cgroup_usable", clone_into_cgroup_usable, METH_NOARGS,
     "clone_into_cgroup_usable() -> whether starts still try CLONE_INTO_CGROUP (for tests)."},
    {"slots", slots, METH_NOARGS,
     "slots() -> (home, out): the reserved descriptors, or -1s if given up (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "jobworker._spawn",
    "Start a job's process: its log created, own session, cgroups joined before exec.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    static int initialized;
    if (!initialized) {
        if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
            Py_DECREF(m);
            return PyErr_NoMemory();
        }
        reserve_slots();
        initialized = 1;
    }
    if (PyModule_AddIntConstant(m, "STAGE_OK", STAGE_OK) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CGROUP", STAGE_CGROUP) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_FDS", STAGE_FDS) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CWD", STAGE_CWD) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_EXEC", STAGE_EXEC) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_LOG", STAGE_LOG) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_GROUPS", STAGE_GROUPS) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_GID", STAGE_GID) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_UID", STAGE_UID) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_DIED", STAGE_DIED) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_PIDFD", STAGE_PIDFD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
