/* A small persistent thread pool (pthreads) running the kernels' parallel regions.
 *
 * Why not OpenMP: torch ships its own libgomp.so.1, which a process that imports torch
 * first shares with this library; with libgomp's default (spinning) waits, a 2-thread
 * kernel call after any torch op took 4-16 ms instead of 0.05 ms on a 2-core machine.
 *
 * Waiting: after a job, a worker spins on the job word for a short window (SK_SPIN_US,
 * default 60 us, $SPARSEC_POOL_SPIN_US overrides, 0 disables) with a pause instruction,
 * so back-to-back calls (a chain of GEMVs in a decode step) start without a futex wake
 * (~70 us here); after the window it blocks on a condition variable, so an idle pool never
 * holds a core for longer than that window and does not steal cores from ONNX Runtime or
 * torch between sparse ops. The caller likewise spins briefly for the workers to finish.
 * One parallel call runs at a time; a concurrent caller runs its call on its own thread.
 * Inside ONNX Runtime ops the regions go to ORT's own pool instead (sk_set_host_pool,
 * sk_ort_pool.c); this pool serves the kernels' C API, TVM and runtimes without that hook.
 */
#define _GNU_SOURCE /* sysconf(_SC_NPROCESSORS_ONLN) under -std=c11 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SK_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SK_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define SK_CPU_RELAX() ((void)0)
#endif

#include "sk_internal.h"

#define SK_SPIN_US 60

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER; /* one parallel call at a time */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;      /* guards sleeping/waking */
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static pthread_once_t spin_once = PTHREAD_ONCE_INIT;
static int nworkers; /* started workers, thread ids 1..nworkers (under call_lock) */
/* Job word: (sequence << 8) | threads of the job, published with release order after
 * job_fn/job_args; a worker reads those two only when its id is below the job's thread
 * count, and then the caller cannot publish the next job before it has finished. */
static atomic_ulong job_word;
static atomic_int pending;
static sk_body_fn job_fn;
static const void *job_args;
static unsigned long start_word[SK_MAX_THREADS];
static int64_t spin_ns = (int64_t)SK_SPIN_US * 1000;

static void read_spin_env(void) {
    const char *env = getenv("SPARSEC_POOL_SPIN_US");
    if (env && *env) {
        const long long us = strtoll(env, NULL, 10);
        spin_ns = us < 0 ? 0 : (us > 10000 ? 10000000 : us * 1000);
    }
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until *word != seen or the window ends; returns the last value read. */
static unsigned long spin_while_equal(atomic_ulong *word, unsigned long seen) {
    unsigned long v = atomic_load_explicit(word, memory_order_acquire);
    if (v != seen || spin_ns <= 0) return v;
    const int64_t end = now_ns() + spin_ns;
    for (;;) {
        for (int i = 0; i < 32; i++) {
            SK_CPU_RELAX();
            v = atomic_load_explicit(word, memory_order_acquire);
            if (v != seen) return v;
        }
        if (now_ns() >= end) return v;
    }
}

static void *worker(void *arg) {
    const int tid = (int)(intptr_t)arg;
    unsigned long seen = start_word[tid];
    int spin = 1; /* only a worker that took part in the last job spins for the next one */
    for (;;) {
        unsigned long w = spin ? spin_while_equal(&job_word, seen)
                               : atomic_load_explicit(&job_word, memory_order_acquire);
        if (w == seen) {
            pthread_mutex_lock(&lock);
            while ((w = atomic_load_explicit(&job_word, memory_order_acquire)) == seen)
                pthread_cond_wait(&start_cv, &lock);
            pthread_mutex_unlock(&lock);
        }
        seen = w;
        const int nth = (int)(w & 0xFF);
        spin = tid < nth;
        if (!spin) continue;
        job_fn(job_args, tid, nth);
        if (atomic_fetch_sub_explicit(&pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&lock); /* the caller may be about to block on done_cv */
            pthread_cond_signal(&done_cv);
            pthread_mutex_unlock(&lock);
        }
    }
    return NULL;
}

/* A forked child has none of the parent's workers: start afresh. */
static void after_fork_child(void) {
    pthread_mutex_init(&call_lock, NULL);
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&start_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
    atomic_store(&pending, 0);
    nworkers = 0;
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_child); }

/* The calling thread's host pool (sk_set_host_pool). */
static _Thread_local sk_host_run_fn host_run;
static _Thread_local void *host_ctx;
static atomic_llong host_regions;

typedef struct {
    sk_body_fn fn;
    const void *args;
    int nth;
} host_job;

static void host_task(void *data, size_t i) {
    const host_job *j = data;
    j->fn(j->args, (int)i, j->nth);
}

void sk_set_host_pool(sk_host_run_fn run, void *host) {
    host_run = run;
    host_ctx = host;
}

long long sk_host_pool_regions(void) { return atomic_load(&host_regions); }

int sk_max_threads(void) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > SK_MAX_THREADS ? SK_MAX_THREADS : (int)n);
}

void sk_run_parallel(int threads, sk_body_fn fn, const void *args) {
    if (threads > SK_MAX_THREADS) threads = SK_MAX_THREADS;
    if (threads > 1 && host_run) {
        host_job job = {fn, args, threads};
        if (host_run(host_ctx, host_task, (size_t)threads, &job) == 0) {
            atomic_fetch_add(&host_regions, 1);
            return;
        }
    }
    if (threads <= 1 || pthread_mutex_trylock(&call_lock) != 0) {
        fn(args, 0, 1);
        return;
    }
    pthread_once(&fork_once, register_fork_handler);
    pthread_once(&spin_once, read_spin_env);
    const unsigned long seq = atomic_load_explicit(&job_word, memory_order_relaxed) >> 8;
    while (nworkers < threads - 1) {
        const int tid = nworkers + 1;
        pthread_t th;
        /* the worker waits for the next job, not a past one */
        start_word[tid] = atomic_load_explicit(&job_word, memory_order_relaxed);
        if (pthread_create(&th, NULL, worker, (void *)(intptr_t)tid) != 0) break;
        pthread_detach(th);
        nworkers++;
    }
    const int nth = threads <= nworkers + 1 ? threads : nworkers + 1;
    if (nth <= 1) {
        pthread_mutex_unlock(&call_lock);
        fn(args, 0, 1);
        return;
    }
    job_fn = fn;
    job_args = args;
    atomic_store_explicit(&pending, nth - 1, memory_order_relaxed);
    atomic_store_explicit(&job_word, ((seq + 1) << 8) | (unsigned long)nth,
                          memory_order_release);
    pthread_mutex_lock(&lock); /* wake workers that stopped spinning */
    pthread_cond_broadcast(&start_cv);
    pthread_mutex_unlock(&lock);
    fn(args, 0, nth);
    if (atomic_load_explicit(&pending, memory_order_acquire) > 0 && spin_ns > 0) {
        const int64_t end = now_ns() + spin_ns;
        while (atomic_load_explicit(&pending, memory_order_acquire) > 0 && now_ns() < end)
            for (int i = 0; i < 32; i++) SK_CPU_RELAX();
    }
    if (atomic_load_explicit(&pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&lock);
        while (atomic_load_explicit(&pending, memory_order_acquire) > 0)
            pthread_cond_wait(&done_cv, &lock);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_unlock(&call_lock);
}
