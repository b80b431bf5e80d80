/* xstate_size.c: how large the x86 XSAVE register state is, as two kernels see it.
 *
 *   xstate_size ptrace   the size of the NT_X86_XSTATE regset of a traced child: the
 *                        only size this kernel accepts back from PTRACE_SETREGSET
 *   xstate_size signal   xstate_size in this process's signal frame (the software-reserved
 *                        bytes of the FP state, FP_XSTATE_MAGIC1 checked)
 *
 * A UML guest puts its own FP buffer size in its signal frames, so "signal" inside the
 * sandbox must equal "ptrace" on the host: a guest kernel that compiled a smaller size in
 * fails PTRACE_SETREGSET with EFAULT on hosts with a larger XSAVE area (AVX-512, AMX). */
#define _GNU_SOURCE
#include <elf.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

static uint32_t frame_size;

static void on_signal(int sig, siginfo_t *info, void *context)
{
    (void)sig; (void)info;
    /* struct _fpstate: sw_reserved at byte 464 holds magic1, extended_size, xfeatures
     * (8 bytes), xstate_size */
    const uint8_t *fp = (const uint8_t *)((ucontext_t *)context)->uc_mcontext.fpregs;
    uint32_t magic, size;
    memcpy(&magic, fp + 464, 4);
    memcpy(&size, fp + 464 + 16, 4);
    frame_size = magic == 0x46505853u ? size : 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "signal") == 0) {
        struct sigaction sa = {.sa_sigaction = on_signal, .sa_flags = SA_SIGINFO};
        sigaction(SIGUSR1, &sa, NULL);
        raise(SIGUSR1);
        printf("%u\n", frame_size);
        return frame_size ? 0 : 1;
    }
    pid_t child = fork();
    if (child == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    static uint8_t buf[1 << 20];
    struct iovec iov = {buf, sizeof buf};
    long rc = ptrace(PTRACE_GETREGSET, child, NT_X86_XSTATE, &iov);
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    if (rc != 0) { perror("PTRACE_GETREGSET"); return 1; }
    printf("%zu\n", iov.iov_len);
    return 0;
}
