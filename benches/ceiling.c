/* The ceiling of a prefork exec-per-job server, for benches/load.rs.
 *
 * usage: ceiling N HANDLER
 *
 * Listens on 127.0.0.1 (an ephemeral port, backlog 1024), forks N workers,
 * then prints `listening on 127.0.0.1:PORT` on stderr. Each worker loops:
 * accept4 (SOCK_CLOEXEC), posix_spawn HANDLER with the connection on fds 0
 * and 1 in a new process group, close the connection, waitpid the handler.
 * Nothing else: no scoreboard, no logs, no watch, no limits. The parent
 * waits for SIGTERM or SIGINT, sends SIGTERM to the workers, reaps them and
 * exits 0. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void worker(int lfd, char *handler) {
    char *argv[] = {handler, NULL};
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOMEM ||
                errno == ENOBUFS)
                usleep(1000);
            continue;
        }
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, c, 0);
        posix_spawn_file_actions_adddup2(&fa, c, 1);
        pid_t pid;
        int e = posix_spawn(&pid, handler, &fa, &attr, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(c);
        if (e != 0)
            continue;
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: ceiling N HANDLER\n");
        return 2;
    }
    int n = atoi(argv[1]);
    if (n < 1 || n > 1024) {
        fprintf(stderr, "ceiling: bad N %s\n", argv[1]);
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a = {0};
    socklen_t alen = sizeof a;
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lfd < 0 ||
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(lfd, 1024) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
        perror("ceiling: listen");
        return 1;
    }
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigprocmask(SIG_BLOCK, &term, NULL);
    pid_t *w = calloc((size_t)n, sizeof *w);
    if (w == NULL)
        return 1;
    for (int i = 0; i < n; i++) {
        w[i] = fork();
        if (w[i] < 0) {
            perror("ceiling: fork");
            for (int j = 0; j < i; j++)
                kill(w[j], SIGKILL);
            return 1;
        }
        if (w[i] == 0) {
            sigprocmask(SIG_UNBLOCK, &term, NULL);
            worker(lfd, argv[2]);
        }
    }
    fprintf(stderr, "listening on 127.0.0.1:%u\n", ntohs(a.sin_port));
    int sig;
    sigwait(&term, &sig);
    for (int i = 0; i < n; i++)
        kill(w[i], SIGTERM);
    for (int i = 0; i < n; i++)
        while (waitpid(w[i], NULL, 0) < 0 && errno == EINTR) {
        }
    return 0;
}
