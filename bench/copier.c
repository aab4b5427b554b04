/* copier: the ways to capture a child's output through a pipe, without Python and
 * without jobworker, to show what each costs the *writer* and where the ceiling is.
 *
 * copier WAKE COPY OUT -- WRITER ARGV...
 *   runs WRITER with stdout and stderr on one 1 MiB pipe (or, for WAKE=redirect, on
 *   OUT itself) and copies the pipe into OUT until EOF.
 *   WAKE: redirect  the kernel writes OUT (no copier)
 *         block     blocking read() loop (the reader sleeps in the pipe)
 *         epoll     non-blocking reads, level-triggered epoll (what most loops do)
 *         eptoggle  the pipe is in the epoll set only while the copier waits
 *         inotify   one-shot IN_MODIFY watch armed only while the copier waits
 *         fasync    O_ASYNC armed only while the copier waits, signal read by signalfd
 *                   (what jobworker does)
 *   COPY: rw        read() into a 1 MiB buffer, write() to OUT
 *         splice    splice() pipe -> OUT
 *         splice2   splice() pipe -> a private pipe -> OUT (the job's pipe stays
 *                   unlocked while OUT is written)
 * Prints one JSON object: wall, writer and copier CPU seconds, reads, wake-ups.
 * Note: inotify hangs on a single write larger than the pipe (it reports a write only
 * when the call returns); the writer used here never does that.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PIPE_SIZE (1 << 20)

static char buf[PIPE_SIZE];
static long reads, wakes;
static int copy_splice, copy_splice2, spare[2];

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(const struct rusage *ru) {
    return (double)(ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) +
           (double)(ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) / 1e6;
}

static void write_all(int fd, const char *p, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, (size_t)n);
        if (w < 0) die("write");
        p += w;
        n -= w;
    }
}

/* One read's worth into OUT: bytes moved, 0 at EOF, -1 if the pipe is empty. */
static ssize_t copy_once(int in, int out, int nonblock) {
    unsigned flags = nonblock ? SPLICE_F_NONBLOCK : 0;
    ssize_t n;
    reads++;
    if (copy_splice) {
        n = splice(in, NULL, out, NULL, PIPE_SIZE, flags);
    } else if (copy_splice2) {
        n = splice(in, NULL, spare[1], NULL, PIPE_SIZE, flags);
        for (ssize_t left = n; left > 0;) {
            ssize_t m = splice(spare[0], NULL, out, NULL, (size_t)left, 0);
            if (m <= 0) die("splice spare");
            left -= m;
        }
    } else {
        n = read(in, buf, PIPE_SIZE);
        if (n > 0) write_all(out, buf, n);
    }
    if (n < 0) {
        if (errno == EAGAIN) return -1;
        die("copy");
    }
    return n;
}

/* Copy until the pipe is empty: 1 while writers remain, 0 at EOF. */
static int drain(int in, int out) {
    for (;;) {
        ssize_t n = copy_once(in, out, 1);
        if (n == 0) return 0;
        if (n < 0) return 1;
    }
}

int main(int argc, char **argv) {
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: copier WAKE COPY OUT -- WRITER ARGV...\n");
        return 2;
    }
    const char *wake = argv[1], *copy = argv[2];
    copy_splice = strcmp(copy, "splice") == 0;
    copy_splice2 = strcmp(copy, "splice2") == 0;
    int out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) die("open");
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0 || fcntl(p[0], F_SETPIPE_SZ, PIPE_SIZE) < 0) die("pipe");
    if (copy_splice2 && (pipe2(spare, O_CLOEXEC) < 0 || fcntl(spare[0], F_SETPIPE_SZ, PIPE_SIZE) < 0))
        die("spare pipe");
    int redirect = strcmp(wake, "redirect") == 0;
    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        int fd = redirect ? out : p[1];
        if (dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(126);
        execv(argv[5], argv + 5);
        _exit(127);
    }
    close(p[1]);
    int in = p[0];
    if (redirect) {
        /* nothing to copy */
    } else if (strcmp(wake, "block") == 0) {
        while (copy_once(in, out, 0) > 0) {
        }
    } else if (strcmp(wake, "epoll") == 0 || strcmp(wake, "eptoggle") == 0) {
        int toggle = strcmp(wake, "eptoggle") == 0;
        fcntl(in, F_SETFL, O_NONBLOCK);
        int ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN}, got[4];
        if (!toggle) epoll_ctl(ep, EPOLL_CTL_ADD, in, &ev);
        while (drain(in, out)) {
            if (toggle) epoll_ctl(ep, EPOLL_CTL_ADD, in, &ev);
            if (epoll_wait(ep, got, 4, -1) < 0 && errno != EINTR) die("epoll_wait");
            wakes++;
            if (toggle) epoll_ctl(ep, EPOLL_CTL_DEL, in, NULL);
        }
    } else if (strcmp(wake, "inotify") == 0) {
        fcntl(in, F_SETFL, O_NONBLOCK);
        int ino = inotify_init1(IN_CLOEXEC);
        char path[64], events[4096];
        snprintf(path, sizeof path, "/proc/self/fd/%d", in);
        while (drain(in, out)) {
            if (inotify_add_watch(ino, path, IN_MODIFY | IN_CLOSE_WRITE | IN_ONESHOT) < 0)
                die("inotify_add_watch");
            if (!drain(in, out)) break; /* a write before the watch raised no event */
            if (read(ino, events, sizeof events) < 0) die("read inotify");
            wakes++;
        }
    } else if (strcmp(wake, "fasync") == 0) {
        int sig = SIGRTMIN + 9, flags = fcntl(in, F_GETFL) | O_NONBLOCK;
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigaddset(&set, SIGIO);
        sigprocmask(SIG_BLOCK, &set, NULL);
        int sfd = signalfd(-1, &set, SFD_CLOEXEC);
        struct f_owner_ex owner = {F_OWNER_TID, (pid_t)syscall(SYS_gettid)};
        if (sfd < 0 || fcntl(in, F_SETOWN_EX, &owner) < 0 || fcntl(in, F_SETSIG, sig) < 0)
            die("fasync setup");
        fcntl(in, F_SETFL, flags);
        struct signalfd_siginfo si[64];
        while (drain(in, out)) {
            fcntl(in, F_SETFL, flags | O_ASYNC);
            if (!drain(in, out)) break; /* a write before the arming sent no signal */
            if (read(sfd, si, sizeof si) < 0) die("read signalfd");
            wakes++;
            fcntl(in, F_SETFL, flags);
        }
    } else {
        fprintf(stderr, "unknown WAKE %s\n", wake);
        return 2;
    }
    int status;
    struct rusage writer, self;
    if (wait4(pid, &status, 0, &writer) < 0) die("wait4");
    double wall = now() - t0;
    getrusage(RUSAGE_SELF, &self);
    struct stat st;
    fstat(out, &st);
    printf("{\"wall_s\": %.6f, \"writer_cpu_s\": %.3f, \"copier_cpu_s\": %.3f, "
           "\"reads\": %ld, \"wakes\": %ld, \"bytes\": %lld, \"exit\": %d}\n",
           wall, cpu(&writer), cpu(&self), reads, wakes, (long long)st.st_size,
           WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
