/* sparsec compiled sparse CPU kernels: public C API (loaded from Python through ctypes).
 *
 * N:M format (packed offline by kernels/packing_nm.py). W is [K, C]; for every output
 * column c, each group of M consecutive k holds at most N nonzeros. Columns are cut into
 * tiles of SK_TILE = 16 (one AVX-512 vector; AVX2/NEON use halves/quarters) and the tile
 * is the unit of the layout so that one vector load fetches 16 columns' values:
 *   values[((t*G + g)*N + j)*16 + lane]          float32, G = K/M, lane = column in tile
 *   meta  [((t*G + g)*N + j)*W + w]               uint16, W words per (tile, group, slot)
 * meta holds log2(M) bits per kept value:
 *   M=4  (W=2): u32 = sum pos[lane] << 2*lane
 *   M=8  (W=3): u32 = sum (pos&3) << 2*lane, then u16 = sum (pos>>2) << lane
 *   M=16 (W=4): u64 = sum pos[lane] << (32*(lane&1) + 4*(lane>>1))
 * (lane-interleaved for M=16 so one 64-bit broadcast + shift decodes all 16 lanes).
 *
 * Block format: blocks of BK x 16 (k x columns). Tile t owns blocks
 * [tile_ptr[t], tile_ptr[t+1]); block b starts at row kidx[b] and its values are
 * values[(b*BK + i)*16 + lane].
 */
#ifndef SPARSEC_SK_H
#define SPARSEC_SK_H
#include <stdint.h>

#define SK_TILE 16

enum sk_isa { SK_ISA_SCALAR = 0, SK_ISA_AVX2 = 1, SK_ISA_AVX512 = 2, SK_ISA_NEON = 3 };

enum sk_status {
    SK_OK = 0,
    SK_ERR_SHAPE = -1,   /* bad dims, unsupported N:M or block height */
    SK_ERR_LENGTH = -2,  /* a buffer length does not match the shape */
    SK_ERR_INDEX = -3,   /* a block pointer or block row is out of range */
    SK_ERR_ISA = -4,     /* the requested ISA is not compiled in or not on this CPU */
    SK_ERR_NULL = -5,
    SK_ERR_MEMORY = -6,  /* a work buffer could not be allocated */
    SK_ERR_NONFINITE = -7, /* sk_nm_prune met a NaN or infinite weight (numpy handles those) */
};

int sk_isa_supported(int isa);
int sk_max_threads(void);
const char *sk_status_string(int status);

/* Number of uint16 metadata words per (tile, group, slot); 0 if M is unsupported. */
int sk_nm_meta_words(int m);

/* y[rows, cols] = x[rows, k] @ W. Row strides ldx/ldy are in elements. */
int sk_nm_matmul(const float *x, int64_t ldx, int64_t rows, int64_t k, int64_t cols,
                 int n, int m, const float *values, int64_t values_len,
                 const uint16_t *meta, int64_t meta_len, float *y, int64_t ldy,
                 int isa, int threads);

/* The same plus bias[cols] added to every row of y (NULL: none). Where the kernel can, the
 * bias goes in as the output is stored (no second pass over y). */
int sk_nm_matmul_bias(const float *x, int64_t ldx, int64_t rows, int64_t k, int64_t cols,
                      int n, int m, const float *values, int64_t values_len,
                      const uint16_t *meta, int64_t meta_len, const float *bias, float *y,
                      int64_t ldy, int isa, int threads);

/* Pack W [K, C] (row stride ldw, in elements) into values/meta in the layout above, the same
 * bytes as kernels/packing_nm.py's pack_nm. SK_ERR_SHAPE also when a group holds more than N
 * nonzeros (packing is lossless: prune first). */
int sk_nm_pack(const float *w, int64_t ldw, int64_t k, int64_t cols, int n, int m, float *values,
               int64_t values_len, uint16_t *meta, int64_t meta_len);

/* Magnitude N:M pruning of W [rows, cols] (row stride ldw) into out (row stride ldo): groups
 * of m consecutive rows per column (along_rows) or m consecutive columns per row; m <= 8.
 * Same result as kernels/packing_nm.py's numpy path (ties: the earlier member is kept).
 * SK_ERR_NONFINITE for a NaN or infinite weight (out is then partly written). */
int sk_nm_prune(const float *w, int64_t ldw, int64_t rows, int64_t cols, int n, int m, int along_rows,
                float *out, int64_t ldo);

int sk_block_matmul(const float *x, int64_t ldx, int64_t rows, int64_t k, int64_t cols,
                    int bk, const int32_t *tile_ptr, int64_t tile_ptr_len,
                    const int32_t *kidx, int64_t nblocks, const float *values,
                    int64_t values_len, float *y, int64_t ldy, int isa, int threads);

#endif
