/* N:M packing (layout in sk.h), the same bytes as kernels/packing_nm.py's numpy packer.
 *
 * In C because a compile packs every layer it lowers: numpy's version makes several passes
 * over weight-sized temporaries (0.5 s for BERT-base's 72 layers); this is one pass that reads
 * each weight once and writes each record once. Portable C: packing is offline work.
 */
#include <string.h>

#include "sk.h"
#include "sk_internal.h"

/* Positions of a group's slots: its nonzeros and then its lowest zeros, n in all, in
 * increasing order (the canonical form the kernels and PackedNM.from_arrays expect).
 * Returns 0, or -1 when the group holds more than n nonzeros. */
static int slot_positions(const float *w, int64_t ldw, int n, int m, uint8_t *pos) {
    int count = 0;
    for (int i = 0; i < m; i++)
        count += w[i * ldw] != 0.0f; /* NaN counts as a nonzero, as in numpy */
    if (count > n)
        return -1;
    int zeros_left = n - count, taken = 0;
    for (int i = 0; i < m && taken < n; i++) {
        if (w[i * ldw] != 0.0f) {
            pos[taken++] = (uint8_t)i;
        } else if (zeros_left > 0) {
            pos[taken++] = (uint8_t)i;
            zeros_left--;
        }
    }
    return 0;
}

static void encode_record(const uint8_t pos[SK_TILE], int m, uint16_t *out) {
    if (m == 4) {
        uint32_t word = 0;
        for (int lane = 0; lane < SK_TILE; lane++)
            word |= (uint32_t)pos[lane] << (2 * lane);
        out[0] = (uint16_t)word;
        out[1] = (uint16_t)(word >> 16);
    } else if (m == 8) {
        uint32_t lo = 0;
        uint16_t hi = 0;
        for (int lane = 0; lane < SK_TILE; lane++) {
            lo |= (uint32_t)(pos[lane] & 3) << (2 * lane);
            hi |= (uint16_t)(((pos[lane] >> 2) & 1) << lane);
        }
        out[0] = (uint16_t)lo;
        out[1] = (uint16_t)(lo >> 16);
        out[2] = hi;
    } else {
        uint64_t word = 0;
        for (int lane = 0; lane < SK_TILE; lane++)
            word |= (uint64_t)pos[lane] << (32 * (lane & 1) + 4 * (lane >> 1));
        for (int i = 0; i < 4; i++)
            out[i] = (uint16_t)(word >> (16 * i));
    }
}

/* For M <= 8: the slot positions of every nonzero pattern (bit i: member i is nonzero),
 * looked up instead of branching per member (random patterns mispredict: numpy's packer,
 * which also looks them up, was faster than the branching loop). */
static void fill_table(int n, int m, uint8_t table[256][8], uint8_t count[256]) {
    float member[8];
    for (int code = 0; code < (1 << m); code++) {
        for (int i = 0; i < m; i++)
            member[i] = (float)((code >> i) & 1);
        count[code] = (uint8_t)__builtin_popcount((unsigned)code);
        if (count[code] <= n)
            slot_positions(member, 1, n, m, table[code]);
    }
}

typedef struct {
    const float *w;
    int64_t ldw, cols, tiles, groups;
    int n, m, words;
    float *values;
    uint16_t *meta;
    int status[SK_MAX_THREADS];
} pack_job;

/* Tiles [t_begin, t_end): each thread writes its own records (tiles are contiguous in both outputs). */
static int pack_tiles(const pack_job *job, int64_t t_begin, int64_t t_end) {
    const float *w = job->w;
    const int64_t ldw = job->ldw, cols = job->cols, groups = job->groups;
    const int n = job->n, m = job->m, words = job->words;
    uint8_t table[256][8], count[256];
    if (m <= 8)
        fill_table(n, m, table, count);
    uint8_t pos[16][SK_TILE]; /* [slot][lane], n <= m <= 16 */
    float vals[16][SK_TILE];
    for (int64_t t = t_begin; t < t_end; t++) {
        const int64_t c0 = t * SK_TILE;
        const int width = cols - c0 < SK_TILE ? (int)(cols - c0) : SK_TILE;
        for (int64_t g = 0; g < groups; g++) {
            const float *rows = w + g * m * ldw + c0;
            if (m <= 8 && width == SK_TILE) { /* the common case: lanes side by side (vectorised) */
                unsigned code[SK_TILE] = {0};
                for (int i = 0; i < m; i++)
                    for (int lane = 0; lane < SK_TILE; lane++)
                        code[lane] |= (unsigned)(rows[i * ldw + lane] != 0.0f) << i; /* NaN: nonzero, as numpy */
                for (int lane = 0; lane < SK_TILE; lane++) {
                    if (count[code[lane]] > n)
                        return SK_ERR_SHAPE;
                    for (int j = 0; j < n; j++) {
                        const uint8_t q = table[code[lane]][j];
                        pos[j][lane] = q;
                        vals[j][lane] = rows[q * ldw + lane];
                    }
                }
            } else {
                for (int lane = 0; lane < SK_TILE; lane++) {
                    uint8_t own[16];
                    const uint8_t *p = own;
                    if (lane >= width) { /* padding column: positions 0..n-1, value 0 */
                        for (int j = 0; j < n; j++)
                            own[j] = (uint8_t)j;
                    } else if (m <= 8) {
                        unsigned code = 0;
                        for (int i = 0; i < m; i++)
                            code |= (unsigned)(rows[i * ldw + lane] != 0.0f) << i;
                        if (count[code] > n)
                            return SK_ERR_SHAPE;
                        p = table[code];
                    } else if (slot_positions(rows + lane, ldw, n, m, own) != 0) {
                        return SK_ERR_SHAPE;
                    }
                    for (int j = 0; j < n; j++) {
                        pos[j][lane] = p[j];
                        vals[j][lane] = lane < width ? rows[p[j] * ldw + lane] : 0.0f;
                    }
                }
            }
            const int64_t record = (t * groups + g) * n;
            for (int j = 0; j < n; j++) {
                memcpy(job->values + (record + j) * SK_TILE, vals[j], sizeof vals[j]);
                encode_record(pos[j], m, job->meta + (record + j) * words);
            }
        }
    }
    return SK_OK;
}

static void pack_body(const void *args, int tid, int nth) {
    pack_job *job = (pack_job *)args;
    int64_t begin, end;
    sk_split(job->tiles, tid, nth, &begin, &end);
    job->status[tid] = pack_tiles(job, begin, end);
}

int sk_nm_pack(const float *w, int64_t ldw, int64_t k, int64_t cols, int n, int m, float *values,
               int64_t values_len, uint16_t *meta, int64_t meta_len) {
    const int words = sk_nm_meta_words(m);
    if (!w || !values || !meta)
        return SK_ERR_NULL;
    if (words == 0 || n < 1 || n > m || k <= 0 || cols <= 0 || k % m != 0 || ldw < cols)
        return SK_ERR_SHAPE;
    const int64_t tiles = (cols + SK_TILE - 1) / SK_TILE, groups = k / m;
    if (values_len != tiles * groups * n * SK_TILE || meta_len != tiles * groups * n * words)
        return SK_ERR_LENGTH;
    pack_job job = {w, ldw, cols, tiles, groups, n, m, words, values, meta, {0}};
    /* Offline, but on every layer a compile lowers: all cores (reads are strided, not bandwidth-bound). */
    const int threads = sk_offline_threads(k * cols, tiles);
    sk_run_parallel(threads, pack_body, &job);
    return sk_first_error(job.status, threads);
}
