/* A small persistent thread pool (pthreads) running the kernels' parallel regions.
 *
 * Why not OpenMP: torch ships its own libgomp.so.1, which a process that imports torch
 * first shares with this library; with libgomp's default (spinning) waits, a 2-thread
 * kernel call after any torch op took 4-16 ms instead of 0.05 ms on a 2-core machine.
 * Workers here block on a condition variable between calls, so idle kernel threads never
 * steal cores from ONNX Runtime or torch, whatever else the process has loaded.
 * One parallel call runs at a time; a concurrent caller runs its call on its own thread.
 */
#define _GNU_SOURCE /* sysconf(_SC_NPROCESSORS_ONLN) under -std=c11 */
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

#include "sk_internal.h"

#define SK_MAX_THREADS 64

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER; /* one parallel call at a time */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;      /* guards the job fields */
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static int nworkers; /* started workers, thread ids 1..nworkers */
static unsigned long generation, start_gen[SK_MAX_THREADS];
static int job_nth, pending;
static sk_body_fn job_fn;
static const void *job_args;

static void *worker(void *arg) {
    const int tid = (int)(intptr_t)arg;
    pthread_mutex_lock(&lock);
    unsigned long seen = start_gen[tid];
    for (;;) {
        while (generation == seen) pthread_cond_wait(&start_cv, &lock);
        seen = generation;
        if (tid >= job_nth) continue;
        const sk_body_fn fn = job_fn;
        const void *args = job_args;
        const int nth = job_nth;
        pthread_mutex_unlock(&lock);
        fn(args, tid, nth);
        pthread_mutex_lock(&lock);
        if (--pending == 0) pthread_cond_signal(&done_cv);
    }
    return NULL;
}

/* A forked child has none of the parent's workers: start afresh. */
static void after_fork_child(void) {
    pthread_mutex_init(&call_lock, NULL);
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&start_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
    nworkers = 0;
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_child); }

int sk_max_threads(void) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > SK_MAX_THREADS ? SK_MAX_THREADS : (int)n);
}

void sk_run_parallel(int threads, sk_body_fn fn, const void *args) {
    if (threads > SK_MAX_THREADS) threads = SK_MAX_THREADS;
    if (threads <= 1 || pthread_mutex_trylock(&call_lock) != 0) {
        fn(args, 0, 1);
        return;
    }
    pthread_once(&fork_once, register_fork_handler);
    pthread_mutex_lock(&lock);
    while (nworkers < threads - 1) {
        const int tid = nworkers + 1;
        pthread_t th;
        start_gen[tid] = generation; /* the worker waits for the next job, not a past one */
        if (pthread_create(&th, NULL, worker, (void *)(intptr_t)tid) != 0) break;
        pthread_detach(th);
        nworkers++;
    }
    const int nth = threads <= nworkers + 1 ? threads : nworkers + 1;
    job_fn = fn;
    job_args = args;
    job_nth = nth;
    pending = nth - 1;
    generation++;
    pthread_cond_broadcast(&start_cv);
    pthread_mutex_unlock(&lock);
    fn(args, 0, nth);
    pthread_mutex_lock(&lock);
    while (pending > 0) pthread_cond_wait(&done_cv, &lock);
    pthread_mutex_unlock(&lock);
    pthread_mutex_unlock(&call_lock);
}
