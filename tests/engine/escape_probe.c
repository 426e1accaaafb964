/* Attacks and probes run from inside a VPS by tests/engine/test_escape.py (the guests have no
 * compiler: the test builds this statically on the host and copies it in). Every probe uses
 * harmless arguments and prints what the kernel answered, one "name=ret:ERRNO" per line.
 *
 *   escape_probe syscalls         each refused system call, and positive controls
 *   escape_probe control          the same calls as root of a fresh user namespace whose root is
 *                                 an unprivileged host uid (no seccomp): run on the host
 *   escape_probe fds              this process's open fds and what they point to
 *   escape_probe inspect PID      reach into process PID: exe, cwd, root, fds, mem, ptrace
 *   escape_probe fill-inodes DIR  create empty files in DIR until the filesystem refuses
 *   escape_probe open-files N S   N processes each open files up to the hard RLIMIT_NOFILE,
 *                                 report, hold them S seconds
 *   escape_probe mknod DIR        make a block and a char device node in DIR
 *   escape_probe subvol DIR NAME  make a btrfs subvolume DIR/NAME (BTRFS_IOC_SUBVOL_CREATE on DIR)
 *   escape_probe kill PID         kill(PID, 0)
 *   escape_probe whoami           effective uid and capabilities (run setuid by a guest user)
 *   escape_probe shm KEY create|attach   System V shared memory by key
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *ename(int e)
{
	static char buf[16];
	switch (e) {
	case 0: return "OK";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EINVAL: return "EINVAL";
	case ENOSYS: return "ENOSYS";
	case ENOSPC: return "ENOSPC";
	case EMFILE: return "EMFILE";
	case ENFILE: return "ENFILE";
	case ENOMEM: return "ENOMEM";
	case EROFS: return "EROFS";
	case ETXTBSY: return "ETXTBSY";
	case ENOKEY: return "ENOKEY";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENOTDIR: return "ENOTDIR";
	case EEXIST: return "EEXIST";
	case ENOTBLK: return "ENOTBLK";
	case ENODEV: return "ENODEV";
	case EAGAIN: return "EAGAIN";
	case EDQUOT: return "EDQUOT";
	case ENOTTY: return "ENOTTY";
	}
	snprintf(buf, sizeof buf, "E%d", e);
	return buf;
}

static void report(const char *name, long ret)
{
	int e = ret < 0 ? errno : 0;
	printf("%s=%ld:%s\n", name, ret, ename(e));
	fflush(stdout);
}

/* getpid through the i386 ABI (int $0x80), which a 64-bit process can use too. */
static long i386_getpid(void)
{
#if defined(__x86_64__)
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
	if (ret < 0 && ret > -4096) {
		errno = -ret;
		return -1;
	}
	return ret;
#else
	errno = EOPNOTSUPP;
	return -1;
#endif
}

#define KEY_SPEC_SESSION_KEYRING -3
#define MS_FORCE_FLAG 1

static void syscalls_probe(void)
{
	char buf[64] = {0};
	long r;
	/* Refused by the filter (ENOSYS inside a VPS). */
	report("init_module", syscall(SYS_init_module, NULL, 0, ""));
	report("finit_module", syscall(SYS_finit_module, -1, "", 0));
	report("delete_module", syscall(SYS_delete_module, "vserver_no_such_module", O_NONBLOCK));
	report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0xdead0000UL));
	report("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0xdead0000UL));
	report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
	report("bpf", syscall(SYS_bpf, 0xffff, NULL, 0));
	report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
	report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, KEY_SPEC_SESSION_KEYRING, 0));
	report("add_key", syscall(SYS_add_key, "", "", NULL, 0, KEY_SPEC_SESSION_KEYRING));
	report("request_key", syscall(SYS_request_key, "", "", NULL, 0));
	r = syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
	report("userfaultfd", r);
	if (r >= 0)
		close(r);
#ifdef SYS_iopl
	report("iopl", syscall(SYS_iopl, 0));
	report("ioperm", syscall(SYS_ioperm, 0, 0, 0));
#endif
	report("swapon", syscall(SYS_swapon, "/nonexistent-vserver-swap", 0));
	report("swapoff", syscall(SYS_swapoff, "/nonexistent-vserver-swap"));
	report("acct", syscall(SYS_acct, "/nonexistent-vserver-dir/acct"));
	report("quotactl", syscall(SYS_quotactl, 0x800005 /* Q_GETINFO usr */, "/nonexistent-vserver-dev", 0, buf));
	report("quotactl_fd", syscall(443, -1, 0x800005, 0, buf));
	report("syslog", syscall(SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0));
	report("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
	report("clock_settime", syscall(SYS_clock_settime, 0, NULL));
	report("lookup_dcookie", syscall(SYS_lookup_dcookie, 0, NULL, 0));
	report("nfsservctl", syscall(SYS_nfsservctl, 0, NULL, NULL));
#ifdef SYS_uselib
	report("uselib", syscall(SYS_uselib, "/nonexistent-vserver-lib"));
#endif
	report("move_pages", syscall(SYS_move_pages, 0, 0, NULL, NULL, NULL, 0));
	report("migrate_pages", syscall(SYS_migrate_pages, 0, 0, NULL, NULL));
	report("io_uring_setup", syscall(425, 0, NULL));
	report("io_uring_enter", syscall(426, -1, 0, 0, 0, NULL, 0));
	report("io_uring_register", syscall(427, -1, 0, NULL, 0));
	report("umount2_force", syscall(SYS_umount2, "/nonexistent-vserver-mnt", MS_FORCE_FLAG));
	report("i386_getpid", i386_getpid());
#ifdef __x86_64__
	report("x32_getpid", syscall(SYS_getpid | 0x40000000));
#endif
	/* Positive controls: still allowed. */
	report("getpid", syscall(SYS_getpid));
	report("umount2", syscall(SYS_umount2, "/nonexistent-vserver-mnt", 0));
	report("reboot_bad_magic", syscall(SYS_reboot, 0, 0, 0, NULL));
	report("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", NULL, NULL, 0));
}

/* Run the probe as root of a new user namespace whose root is host uid MAPPED_TO (an
 * unprivileged one): the answers a VPS would get without the filter and the dropped caps. */
static int control(void)
{
	int ready[2], go[2];
	char c = 0;
	if (pipe(ready) || pipe(go))
		return 2;
	pid_t pid = fork();
	if (pid == 0) {
		close(ready[0]);
		close(go[1]);
		if (unshare(CLONE_NEWUSER) != 0) {
			perror("unshare");
			_exit(2);
		}
		if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1 || c != 'g')
			_exit(2); /* no map written: never run the calls as the host's root */
		if (setresgid(0, 0, 0) || setresuid(0, 0, 0)) {
			perror("setresuid");
			_exit(2);
		}
		syscalls_probe();
		_exit(0);
	}
	close(ready[1]);
	close(go[0]);
	if (read(ready[0], &c, 1) != 1)
		return 2;
	const char *maps[] = {"uid_map", "gid_map"};
	for (int i = 0; i < 2; i++) {
		char path[64];
		snprintf(path, sizeof path, "/proc/%d/%s", pid, maps[i]);
		int fd = open(path, O_WRONLY);
		const char *line = "0 2147400000 1\n";
		if (fd < 0 || write(fd, line, strlen(line)) != (ssize_t)strlen(line)) {
			perror(path);
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			return 2;
		}
		close(fd);
	}
	if (write(go[1], "g", 1) != 1)
		return 2;
	int status;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 3;
}

static void list_fds(const char *dir_path)
{
	DIR *dir = opendir(dir_path);
	if (!dir) {
		report("fd_dir", -1);
		return;
	}
	int skip = dirfd(dir); /* our own look at the directory */
	struct dirent *entry;
	while ((entry = readdir(dir))) {
		if (entry->d_name[0] == '.')
			continue;
		int fd = atoi(entry->d_name);
		if (fd == skip)
			continue;
		char path[512], target[512];
		snprintf(path, sizeof path, "%s/%s", dir_path, entry->d_name);
		ssize_t n = readlink(path, target, sizeof target - 1);
		target[n < 0 ? 0 : n] = 0;
		printf("fd %d %s\n", fd, n < 0 ? ename(errno) : target);
	}
	closedir(dir);
}

static int fds(void)
{
	list_fds("/proc/self/fd");
	char cwd[512];
	printf("cwd %s\n", getcwd(cwd, sizeof cwd) ? cwd : ename(errno));
	return 0;
}

static void try_readlink(const char *name, const char *path)
{
	char target[512];
	ssize_t n = readlink(path, target, sizeof target - 1);
	if (n >= 0) {
		target[n] = 0;
		printf("%s=0:OK %s\n", name, target);
	} else {
		report(name, -1);
	}
}

static void try_open(const char *name, const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC);
	report(name, fd);
	if (fd >= 0)
		close(fd);
}

static int inspect(const char *pid)
{
	char path[128];
	snprintf(path, sizeof path, "/proc/%s/exe", pid);
	try_readlink("readlink_exe", path);
	try_open("open_exe_read", path, O_RDONLY);
	try_open("open_exe_write", path, O_WRONLY);
	snprintf(path, sizeof path, "/proc/%s/cwd", pid);
	try_readlink("readlink_cwd", path);
	snprintf(path, sizeof path, "/proc/%s/cwd/", pid);
	try_open("open_cwd", path, O_RDONLY | O_DIRECTORY);
	snprintf(path, sizeof path, "/proc/%s/root", pid);
	try_readlink("readlink_root", path);
	snprintf(path, sizeof path, "/proc/%s/root/", pid);
	try_open("open_root", path, O_RDONLY | O_DIRECTORY);
	snprintf(path, sizeof path, "/proc/%s/fd", pid);
	try_open("open_fd_dir", path, O_RDONLY | O_DIRECTORY);
	snprintf(path, sizeof path, "/proc/%s/fd/3", pid);
	try_open("open_fd_3", path, O_RDONLY);
	snprintf(path, sizeof path, "/proc/%s/mem", pid);
	try_open("open_mem", path, O_RDONLY);
	snprintf(path, sizeof path, "/proc/%s/environ", pid);
	try_open("open_environ", path, O_RDONLY);
	long r = ptrace(PTRACE_ATTACH, atoi(pid), NULL, NULL);
	report("ptrace_attach", r);
	if (r == 0) {
		waitpid(atoi(pid), NULL, __WALL);
		ptrace(PTRACE_DETACH, atoi(pid), NULL, NULL);
	}
	return 0;
}

static int fill_inodes(const char *dir)
{
	char path[512];
	long n = 0;
	int err = 0;
	for (;;) {
		snprintf(path, sizeof path, "%s/f%ld", dir, n);
		int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
		if (fd < 0) {
			err = errno;
			break;
		}
		close(fd);
		n++;
	}
	printf("created=%ld:%s\n", n, ename(err));
	return 0;
}

/* BTRFS_IOC_SUBVOL_CREATE (_IOW(0x94, 14, struct btrfs_ioctl_vol_args)) of NAME in DIR: a
 * subvolume has a qgroup of its own, outside the limit of the one it was made in. */
static int subvol(const char *dir, const char *name)
{
	struct {
		int64_t fd;
		char name[4088];
	} args;
	memset(&args, 0, sizeof args);
	strncpy(args.name, name, sizeof args.name - 1);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		report("subvol", -1);
		return 0;
	}
	report("subvol", ioctl(fd, 0x5000940EUL, &args));
	close(fd);
	return 0;
}

/* Each of N processes raises its soft RLIMIT_NOFILE to the hard one and opens /dev/null until
 * refused; prints its count and errno, then holds the files HOLD seconds. */
static int open_files(int n, int hold)
{
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	printf("rlimit_nofile=%llu/%llu\n", (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
	fflush(stdout);
	struct rlimit higher = {rl.rlim_max + 1, rl.rlim_max + 1};
	report("raise_hard_limit", setrlimit(RLIMIT_NOFILE, &higher));
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			report("fork", -1);
			break;
		}
		if (pid == 0) {
			long count = 0;
			int err = 0;
			for (;;) {
				if (open("/dev/null", O_RDONLY) < 0) {
					err = errno;
					break;
				}
				count++;
			}
			printf("opened=%ld:%s\n", count, ename(err));
			fflush(stdout);
			sleep(hold);
			_exit(0);
		}
	}
	while (wait(NULL) > 0)
		;
	return 0;
}

static int make_nodes(const char *dir)
{
	char path[512];
	snprintf(path, sizeof path, "%s/vserver-block", dir);
	report("mknod_block", mknod(path, S_IFBLK | 0600, makedev(8, 0)));
	snprintf(path, sizeof path, "%s/vserver-char", dir);
	report("mknod_char_mem", mknod(path, S_IFCHR | 0600, makedev(1, 1)));
	snprintf(path, sizeof path, "%s/vserver-fifo", dir);
	report("mknod_fifo", mknod(path, S_IFIFO | 0600, 0));
	return 0;
}

static int whoami(void)
{
	printf("euid=%d\n", (int)geteuid());
	FILE *status = fopen("/proc/self/status", "r");
	char line[256];
	while (status && fgets(line, sizeof line, status))
		if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "Seccomp:", 8) || !strncmp(line, "NoNewPrivs:", 11))
			fputs(line, stdout);
	if (status)
		fclose(status);
	return 0;
}

static int shm(const char *key_text, const char *how)
{
	key_t key = (key_t)strtoul(key_text, NULL, 0);
	int id = shmget(key, 4096, !strcmp(how, "create") ? IPC_CREAT | 0600 : 0);
	report("shmget", id);
	if (id >= 0) {
		void *at = shmat(id, NULL, 0);
		report("shmat", at == (void *)-1 ? -1 : 0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	const char *cmd = argv[1];
	if (!strcmp(cmd, "syscalls")) {
		syscalls_probe();
		return 0;
	}
	if (!strcmp(cmd, "control"))
		return control();
	if (!strcmp(cmd, "fds"))
		return fds();
	if (!strcmp(cmd, "inspect") && argc == 3)
		return inspect(argv[2]);
	if (!strcmp(cmd, "fill-inodes") && argc == 3)
		return fill_inodes(argv[2]);
	if (!strcmp(cmd, "open-files") && argc == 4)
		return open_files(atoi(argv[2]), atoi(argv[3]));
	if (!strcmp(cmd, "mknod") && argc == 3)
		return make_nodes(argv[2]);
	if (!strcmp(cmd, "subvol") && argc == 4)
		return subvol(argv[2], argv[3]);
	if (!strcmp(cmd, "whoami"))
		return whoami();
	if (!strcmp(cmd, "shm") && argc == 4)
		return shm(argv[2], argv[3]);
	if (!strcmp(cmd, "kill") && argc == 3) {
		report("kill0", kill(atoi(argv[2]), 0));
		return 0;
	}
	return 2;
}
