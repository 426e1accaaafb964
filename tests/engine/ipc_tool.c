/* Creates one of each IPC object (SysV shm, semaphore set, message queue and a POSIX
   message queue) with a known key, for the IPC isolation test; built static so it runs
   in any guest. Usage: ipc_tool KEY */
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    if (shmget(key, 4096, IPC_CREAT | 0600) < 0) { perror("shmget"); return 1; }
    if (semget(key, 1, IPC_CREAT | 0600) < 0) { perror("semget"); return 1; }
    if (msgget(key, IPC_CREAT | 0600) < 0) { perror("msgget"); return 1; }
    mqd_t mq = mq_open("/vserver-test", O_CREAT | O_RDWR, 0600, NULL);
    if (mq == (mqd_t)-1) { perror("mq_open"); return 1; }
    puts("created");
    return 0;
}
