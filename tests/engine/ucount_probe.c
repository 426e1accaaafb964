/* Takes as many as it can of the kernel's per-user objects, from inside a VPS (or any user
 * namespace), and says how many it got and why it stopped; with "hold" it keeps them all
 * until killed. Built statically on the host by tests/engine/test_walls_ucounts.py.
 *
 *   ucount_probe [hold] [max N] [userns] [inotify] [watches DIR] [fanotify] [fanmarks DIR]
 *                [mqueue] [sigpending] [clock]
 *
 * Each kind prints "kind=COUNT ERRNO" (the errno of the first refusal, or "-" if it stopped
 * at the ceiling, N of each kind); "clock" prints "call=RET:ERRNO" lines. Then "ready".
 * Without "hold" the message queues are unlinked at the end, so nothing stays taken.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long CEILING = 200000; /* never loop forever where nothing stops us; "max N" */
static int hold;

static void say(const char *kind, long count, int err)
{
	printf("%s=%ld %s\n", kind, count, err ? strerrorname_np(err) : "-");
	fflush(stdout);
}

static int make_file(const char *dir, long i, char *path, size_t size)
{
	snprintf(path, size, "%s/f%ld", dir, i);
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static void grab_userns(void)
{
	long n = 0;
	int err = 0;
	while (n < CEILING) {
		int pipefd[2];
		if (pipe(pipefd) != 0) {
			err = errno;
			break;
		}
		pid_t pid = fork();
		if (pid < 0) {
			err = errno;
			close(pipefd[0]);
			close(pipefd[1]);
			break;
		}
		if (pid == 0) {
			int result = unshare(CLONE_NEWUSER) == 0 ? 0 : errno;
			if (write(pipefd[1], &result, sizeof result) != sizeof result)
				_exit(1);
			pause();
			_exit(0);
		}
		close(pipefd[1]);
		int result = EIO;
		if (read(pipefd[0], &result, sizeof result) != sizeof result)
			result = EIO;
		close(pipefd[0]);
		if (result == 0) {
			char path[64];
			snprintf(path, sizeof path, "/proc/%d/ns/user", pid);
			if (open(path, O_RDONLY | O_CLOEXEC) < 0) /* the fd keeps the namespace */
				result = errno;
		}
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		if (result != 0) {
			err = result;
			break;
		}
		n++;
	}
	say("userns", n, err);
}

static void grab_inotify(void)
{
	long n = 0;
	int err = 0;
	while (n < CEILING) {
		if (inotify_init1(IN_CLOEXEC) < 0) {
			err = errno;
			break;
		}
		n++;
	}
	say("inotify", n, err);
}

static void grab_watches(const char *dir)
{
	long n = 0;
	int err = 0;
	char path[4096];
	int fd = inotify_init1(IN_CLOEXEC);
	if (fd < 0) {
		say("watches", 0, errno);
		return;
	}
	mkdir(dir, 0700);
	while (n < CEILING) {
		if (make_file(dir, n, path, sizeof path) != 0 || inotify_add_watch(fd, path, IN_MODIFY) < 0) {
			err = errno;
			break;
		}
		n++;
	}
	say("watches", n, err);
}

static void grab_fanotify(void)
{
	long n = 0;
	int err = 0;
	while (n < CEILING) {
		if (fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC, O_RDONLY) < 0) {
			err = errno;
			break;
		}
		n++;
	}
	say("fanotify", n, err);
}

static void grab_fanmarks(const char *dir)
{
	long n = 0;
	int err = 0;
	char path[4096];
	int fd = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC, O_RDONLY);
	if (fd < 0) {
		say("fanmarks", 0, errno);
		return;
	}
	mkdir(dir, 0700);
	while (n < CEILING) {
		if (make_file(dir, n, path, sizeof path) != 0 ||
		    fanotify_mark(fd, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, path) != 0) {
			err = errno;
			break;
		}
		n++;
	}
	say("fanmarks", n, err);
}

static void grab_mqueue(void)
{
	/* The largest queues the IPC namespace's defaults allow (10 messages of 8 KiB), then
	 * smaller ones to fill what is left; prints the bytes asked for. */
	long queues = 0, bytes = 0;
	int err = 0;
	long sizes[] = {8192, 1024, 128, 16, 1};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
		while (queues < CEILING) {
			struct mq_attr attr = {.mq_maxmsg = 10, .mq_msgsize = sizes[s]};
			char name[64];
			snprintf(name, sizeof name, "/ucount-probe-%d-%ld", getpid(), queues);
			if (mq_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600, &attr) < 0) {
				err = errno;
				break;
			}
			queues++;
			bytes += attr.mq_maxmsg * attr.mq_msgsize;
			if (!hold)
				mq_unlink(name); /* the open fd keeps it (and its bytes) until exit */
		}
	}
	say("mqueue", bytes, err);
	say("mqueues", queues, err);
}

static void grab_sigpending(void)
{
	int ready[2];
	if (pipe(ready) != 0) {
		say("sigpending", 0, errno);
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGRTMIN);
		sigprocmask(SIG_BLOCK, &set, NULL);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (write(ready[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	char c;
	close(ready[1]);
	if (pid < 0 || read(ready[0], &c, 1) != 1) {
		say("sigpending", 0, pid < 0 ? errno : EIO);
		return;
	}
	long n = 0;
	int err = 0;
	union sigval value = {.sival_int = 0};
	while (n < CEILING) {
		if (sigqueue(pid, SIGRTMIN, value) != 0) {
			err = errno;
			break;
		}
		n++;
	}
	say("sigpending", n, err);
}

static void clock_call(const char *name, long ret)
{
	printf("%s=%ld:%s\n", name, ret, ret < 0 ? strerrorname_np(errno) : "0");
}

static void try_clock(void)
{
	struct timex tx;
	memset(&tx, 0, sizeof tx);
	clock_call("adjtimex_read", syscall(SYS_adjtimex, &tx));
	memset(&tx, 0, sizeof tx);
	tx.modes = ADJ_SETOFFSET;
	tx.time.tv_sec = 3600;
	clock_call("adjtimex_setoffset", syscall(SYS_adjtimex, &tx));
	memset(&tx, 0, sizeof tx);
	tx.modes = ADJ_FREQUENCY;
	tx.freq = 1 << 16;
	clock_call("adjtimex_frequency", syscall(SYS_adjtimex, &tx));
	memset(&tx, 0, sizeof tx);
	clock_call("clock_adjtime_read", syscall(SYS_clock_adjtime, CLOCK_REALTIME, &tx));
	memset(&tx, 0, sizeof tx);
	tx.modes = ADJ_SETOFFSET;
	tx.time.tv_sec = 3600;
	clock_call("clock_adjtime_setoffset", syscall(SYS_clock_adjtime, CLOCK_REALTIME, &tx));
	struct timeval tv;
	gettimeofday(&tv, NULL);
	tv.tv_sec += 3600;
	clock_call("settimeofday", syscall(SYS_settimeofday, &tv, NULL));
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 3600;
	clock_call("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, &ts));
	fflush(stdout);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *kind = argv[i];
		if (!strcmp(kind, "userns"))
			grab_userns();
		else if (!strcmp(kind, "inotify"))
			grab_inotify();
		else if (!strcmp(kind, "watches") && i + 1 < argc)
			grab_watches(argv[++i]);
		else if (!strcmp(kind, "fanotify"))
			grab_fanotify();
		else if (!strcmp(kind, "fanmarks") && i + 1 < argc)
			grab_fanmarks(argv[++i]);
		else if (!strcmp(kind, "mqueue"))
			grab_mqueue();
		else if (!strcmp(kind, "sigpending"))
			grab_sigpending();
		else if (!strcmp(kind, "clock"))
			try_clock();
		else if (!strcmp(kind, "hold"))
			hold = 1;
		else if (!strcmp(kind, "max") && i + 1 < argc)
			CEILING = atol(argv[++i]);
		else {
			fprintf(stderr, "unknown kind %s\n", kind);
			return 2;
		}
	}
	printf("ready\n");
	fflush(stdout);
	while (hold)
		pause();
	return 0;
}
