/* Tensor-parallel all-reduce and all-gather through shared memory, for ranks on one machine (vLLM's CPU backend
 * has them too).
 *
 * A gloo all-reduce of one 576-float row between two processes on one VM took ~1.2 ms, and a decode step of the
 * bundled model makes ~60 of them; this path is a copy, a flag and a sum.
 *
 * Region layout (distributed/shm_collectives.py maps it in every rank): one int64 flag per rank, each on its own
 * 64-byte line, then two sets ("parities") of one slot per rank, `capacity` elements each. Call number `seq`
 * (1, 2, ... the same on every rank) uses parity seq & 1: each rank copies its chunk into its slot, publishes
 * `seq` in its flag (release), waits for every flag to reach `seq` (acquire) and sums the slots in rank order,
 * so every rank computes the same bits. A rank reuses a parity's slot at call seq + 2 only after every rank has
 * published seq + 1, which each does only after it finished reading call seq: two parities need no second
 * barrier. Tensors larger than a slot go through in chunks, one call number each.
 *
 * The all-gather uses the same slots and flags (its bytes as they are): each rank reads every slot out.
 *
 * The sum runs one pass per rank over blocks of BLOCK elements (acc = slot 0; acc += slot r), each pass an
 * elementwise a + b that -ffast-math cannot reassociate. bfloat16 is summed in float32 and rounded once.
 */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include "bf16.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define FLAG_STRIDE 8     /* int64s per flag: one 64-byte cache line each */
#define DATA_OFFSET 4096  /* flags of up to 64 ranks, then the slots */
#define BLOCK 1024
/* Spins before a waiting rank starts yielding its core: ~10-40 us of pause, longer than a balanced wait here;
   past it the other rank is likely descheduled (more ranks than free cores) and spinning would keep it so. */
#define SPINS_BEFORE_YIELD 4096

static double monotonic_s(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* 0 once every rank has published `seq`; -1 after `timeout_s` seconds (a rank died or hangs). */
static int wait_for_ranks(int64_t *flags, int world, int64_t seq, float timeout_s) {
    for (int r = 0; r < world; r++) {
        int64_t spins = 0;
        double start = 0.0;
        while (__atomic_load_n(&flags[r * FLAG_STRIDE], __ATOMIC_ACQUIRE) < seq) {
            if (++spins < SPINS_BEFORE_YIELD) {
                CPU_RELAX();
                continue;
            }
            sched_yield();
            if ((spins & 1023) == 0) {
                const double now = monotonic_s();
                if (start == 0.0) {
                    start = now;
                } else if (now - start > timeout_s) {
                    return -1;
                }
            }
        }
    }
    return 0;
}

static void sum_f32(float *out, char *const *slots, int world, int64_t count) {
    for (int64_t b = 0; b < count; b += BLOCK) {
        const int64_t len = count - b < BLOCK ? count - b : BLOCK;
        float acc[BLOCK];
        const float *first = (const float *)slots[0] + b;
        for (int64_t i = 0; i < len; i++) acc[i] = first[i];
        for (int r = 1; r < world; r++) {
            const float *part = (const float *)slots[r] + b;
            for (int64_t i = 0; i < len; i++) acc[i] += part[i];
        }
        memcpy(out + b, acc, (size_t)len * sizeof(float));
    }
}

static void sum_bf16(uint16_t *out, char *const *slots, int world, int64_t count) {
    for (int64_t b = 0; b < count; b += BLOCK) {
        const int64_t len = count - b < BLOCK ? count - b : BLOCK;
        float acc[BLOCK];
        const uint16_t *first = (const uint16_t *)slots[0] + b;
        for (int64_t i = 0; i < len; i++) acc[i] = bf16_to_f32(first[i]);
        for (int r = 1; r < world; r++) {
            const uint16_t *part = (const uint16_t *)slots[r] + b;
            for (int64_t i = 0; i < len; i++) acc[i] += bf16_to_f32(part[i]);
        }
        for (int64_t i = 0; i < len; i++) out[b + i] = f32_to_bf16(acc[i]);
    }
}

/* Sums x [n] (dtype 0: float32, 1: bfloat16) over the `world` ranks in place. *seq is the last call number used
 * (0 before the first call); it is advanced by the chunks sent. Returns 0, 1 on timeout, 2 on bad arguments. */
int shm_all_reduce(void *region, void *x, int64_t n, int64_t capacity, int dtype, int rank, int world,
                   int64_t *seq, float timeout_s) {
    if (dtype < 0 || dtype > 1 || world < 1 || world * FLAG_STRIDE * 8 > DATA_OFFSET || rank < 0 ||
        rank >= world || capacity < 1) {
        return 2;
    }
    const int64_t elem = dtype == 0 ? 4 : 2;
    int64_t *flags = (int64_t *)region;
    char *data = (char *)region + DATA_OFFSET;
    char *values = (char *)x;
    char *slots[64];
    for (int64_t done = 0; done < n; done += capacity) {
        const int64_t count = n - done < capacity ? n - done : capacity;
        const int64_t call = *seq + 1;
        const int64_t parity = call & 1;
        /* Slots are laid out for 4-byte elements whatever the dtype: consecutive calls of different dtypes
           must not move a slot onto another rank's slot of the other parity, still being read. */
        for (int r = 0; r < world; r++) slots[r] = data + ((parity * world + r) * capacity) * 4;
        memcpy(slots[rank], values + done * elem, (size_t)(count * elem));
        __atomic_store_n(&flags[rank * FLAG_STRIDE], call, __ATOMIC_RELEASE);
        if (wait_for_ranks(flags, world, call, timeout_s) != 0) return 1;
        if (dtype == 0) {
            sum_f32((float *)(values + done * elem), slots, world, count);
        } else {
            sum_bf16((uint16_t *)(values + done * elem), slots, world, count);
        }
        *seq = call;
    }
    return 0;
}

/* Concatenates every rank's `nbytes` bytes of x into out [world, nbytes], in rank order. *seq as above; `capacity`
 * is the slot size in float32 elements (4 * capacity bytes). Returns 0, 1 on timeout, 2 on bad arguments. */
int shm_all_gather(void *region, const void *x, int64_t nbytes, void *out, int64_t capacity, int rank, int world,
                   int64_t *seq, float timeout_s) {
    if (world < 1 || world * FLAG_STRIDE * 8 > DATA_OFFSET || rank < 0 || rank >= world || capacity < 1) {
        return 2;
    }
    const int64_t slot_bytes = capacity * 4;
    int64_t *flags = (int64_t *)region;
    char *data = (char *)region + DATA_OFFSET;
    for (int64_t done = 0; done < nbytes; done += slot_bytes) {
        const int64_t count = nbytes - done < slot_bytes ? nbytes - done : slot_bytes;
        const int64_t call = *seq + 1;
        const int64_t parity = call & 1;
        memcpy(data + (parity * world + rank) * slot_bytes, (const char *)x + done, (size_t)count);
        __atomic_store_n(&flags[rank * FLAG_STRIDE], call, __ATOMIC_RELEASE);
        if (wait_for_ranks(flags, world, call, timeout_s) != 0) return 1;
        for (int r = 0; r < world; r++) {
            memcpy((char *)out + r * nbytes + done, data + (parity * world + r) * slot_bytes, (size_t)count);
        }
        *seq = call;
    }
    return 0;
}

/* The step's broadcast (rank 0 to the others, distributed/shm_collectives.py's broadcast_bytes), in its own area of
 * the region: a control line (the call number as a 32-bit futex word, the count of sleeping receivers, the length
 * of each parity's payload), one ack line per rank, then two payload buffers of `capacity` bytes. Between steps a
 * receiver waits here for as long as the server is idle: it spins briefly (the next step of a busy server comes
 * within microseconds to milliseconds), then sleeps on the futex, which rank 0 wakes when it publishes, so an idle
 * rank takes no CPU. It wakes each second to check that rank 0 (sender_pid) still exists. A payload longer than
 * `capacity` is announced here (its length) and sent over gloo by the caller. */
#define BCAST_HEADER 8192 /* control line, then one ack line per rank (up to 64 ranks) */
#define BCAST_SPINS 20000  /* ~0.1-0.5 ms of pause before sleeping */

typedef struct {
    uint32_t word;      /* the last published call number (low 32 bits) */
    int32_t sleepers;   /* receivers in (or about to enter) futex_wait */
    int64_t len[2];     /* payload length of each parity's call */
    int64_t unused;
    int64_t sender_pid; /* written by distributed/shm_collectives.py at set-up (offset 32) */
} bcast_control;

#if defined(__linux__)
static long futex(uint32_t *word, int op, uint32_t value, const struct timespec *timeout) {
    return syscall(SYS_futex, word, op, value, timeout, NULL, 0);
}
#else /* no futex: the caller keeps the step's broadcast on gloo (status 2) */
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
static long futex(uint32_t *word, int op, uint32_t value, const struct timespec *timeout) {
    (void)word, (void)op, (void)value, (void)timeout;
    errno = ENOSYS;
    return -1;
}
#endif

/* Rank 0: publishes call *seq + 1 with `len` bytes of data (copied when len <= capacity). 0, 1 when a receiver did
 * not take call *seq - 1 within timeout_s (its buffer is about to be reused), 2 on bad arguments. */
int shm_broadcast_send(void *area, const void *data, int64_t len, int64_t capacity, int world, int64_t *seq,
                       float timeout_s) {
#if !defined(__linux__)
    return 2;
#endif
    if (world < 1 || world > 64 || len < 0 || capacity < 1) return 2;
    bcast_control *control = (bcast_control *)area;
    int64_t *acks = (int64_t *)((char *)area + 64);
    const int64_t call = *seq + 1;
    if (wait_for_ranks(acks, world, call - 2, timeout_s) != 0) return 1; /* rank 0's own ack is always current */
    const int parity = (int)(call & 1);
    if (len <= capacity) memcpy((char *)area + BCAST_HEADER + parity * capacity, data, (size_t)len);
    control->len[parity] = len;
    __atomic_store_n(&acks[0], call, __ATOMIC_RELEASE);
    __atomic_store_n(&control->word, (uint32_t)call, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&control->sleepers, __ATOMIC_SEQ_CST) > 0) futex(&control->word, FUTEX_WAKE, INT_MAX, NULL);
    *seq = call;
    return 0;
}

/* Ranks 1..: waits for call *seq + 1 (without limit: the server may be idle for days), copies its payload into out
 * when it fits `capacity` and sets *len_out. 0, or 1 when rank 0 (sender_pid) no longer exists. */
int shm_broadcast_recv(void *area, void *out, int64_t capacity, int rank, int64_t *seq, int64_t *len_out,
                       int64_t sender_pid) {
    bcast_control *control = (bcast_control *)area;
    int64_t *acks = (int64_t *)((char *)area + 64);
    const int64_t call = *seq + 1;
    const uint32_t expected = (uint32_t)call;
    for (int64_t spins = 0; __atomic_load_n(&control->word, __ATOMIC_ACQUIRE) != expected;) {
        if (++spins < BCAST_SPINS) {
            CPU_RELAX();
            continue;
        }
        __atomic_add_fetch(&control->sleepers, 1, __ATOMIC_SEQ_CST);
        const uint32_t seen = __atomic_load_n(&control->word, __ATOMIC_SEQ_CST);
        long slept = 0;
        if (seen != expected) {
            const struct timespec second = {1, 0};
            slept = futex(&control->word, FUTEX_WAIT, seen, &second);
        }
        __atomic_sub_fetch(&control->sleepers, 1, __ATOMIC_SEQ_CST);
        if (slept == -1 && errno == ETIMEDOUT && kill((pid_t)sender_pid, 0) == -1 && errno == ESRCH) return 1;
    }
    const int parity = (int)(call & 1);
    const int64_t len = control->len[parity];
    if (len <= capacity) memcpy(out, (char *)area + BCAST_HEADER + parity * capacity, (size_t)len);
    __atomic_store_n(&acks[rank * FLAG_STRIDE], call, __ATOMIC_RELEASE);
    *len_out = len;
    *seq = call;
    return 0;
}
