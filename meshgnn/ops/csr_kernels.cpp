// CPU kernels of meshgnn.ops on receiver-sorted CSR graphs (no torch headers: builds in about a second).
//
// Every kernel walks CSR rows; one thread owns a whole row and adds its edges in edge order, so results are
// bitwise identical for any thread count (no atomics). Features are the contiguous inner dimension, processed
// in tiles of compile-time width (128, 64, ..., 8, then 1) so the compiler unrolls the feature loop and keeps the
// row accumulator in registers; a fixed width was measured 2-3x faster than a runtime-length loop.
// dtype codes: 0 float32, 1 float64, 2 bfloat16 (accumulated in float32, rounded once to nearest even).
#include <cstdint>
#include <cstring>
#include <new>

typedef int64_t i64;

struct F32 {
  typedef float S; typedef float A;
  static inline A load(S x) { return x; }
  static inline S store(A x) { return x; }
};
struct F64 {
  typedef double S; typedef double A;
  static inline A load(S x) { return x; }
  static inline S store(A x) { return x; }
};
struct BF16 {
  typedef uint16_t S; typedef float A;
  static inline A load(S h) { uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f; }
  static inline S store(A f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (S)((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                     // round to nearest even
    return (S)(u >> 16);
  }
};

// Calls body.template tile<W>(f0) over [0, F) with the widest compile-time tiles that fit.
template <class Body>
static inline void for_tiles(i64 F, Body& body) {
  i64 f0 = 0;
  for (; f0 + 128 <= F; f0 += 128) body.template tile<128>(f0);
  if (f0 + 64 <= F) { body.template tile<64>(f0); f0 += 64; }
  if (f0 + 32 <= F) { body.template tile<32>(f0); f0 += 32; }
  if (f0 + 16 <= F) { body.template tile<16>(f0); f0 += 16; }
  if (f0 + 8 <= F) { body.template tile<8>(f0); f0 += 8; }
  for (; f0 < F; f0++) body.template tile<1>(f0);
}

// out[i] = sum_{j in rowptr[i]:rowptr[i+1]} x[perm ? perm[j] : j]
template <class T, bool PERM>
struct RowSum {
  const typename T::S* __restrict x; const i64* __restrict perm; typename T::S* __restrict out;
  i64 F, b, e, i;
  template <int W> inline void tile(i64 f0) {
    typename T::A acc[W];
    for (int f = 0; f < W; f++) acc[f] = 0;
    for (i64 j = b; j < e; j++) {
      const typename T::S* __restrict row = x + (PERM ? perm[j] : j) * F + f0;
      for (int f = 0; f < W; f++) acc[f] += T::load(row[f]);
    }
    typename T::S* __restrict o = out + i * F + f0;
    for (int f = 0; f < W; f++) o[f] = T::store(acc[f]);
  }
};

template <class T, bool PERM>
static void segment_sum(const void* x, const i64* rowptr, const i64* perm, void* out, i64 n, i64 F, int nt) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(nt)
  for (i64 i = 0; i < n; i++) {
    RowSum<T, PERM> body{(const typename T::S*)x, perm, (typename T::S*)out, F, rowptr[i], rowptr[i + 1], i};
    for_tiles(F, body);
  }
}

// out[j] = x[i] for every edge j of row i (the adjoint of segment_sum)
template <class T>
static void segment_expand(const void* xv, const i64* rowptr, void* outv, i64 n, i64 F, int nt) {
  const typename T::S* x = (const typename T::S*)xv;
  typename T::S* out = (typename T::S*)outv;
#pragma omp parallel for schedule(dynamic, 64) num_threads(nt)
  for (i64 i = 0; i < n; i++)
    for (i64 j = rowptr[i]; j < rowptr[i + 1]; j++)
      std::memcpy(out + j * F, x + i * F, F * sizeof(typename T::S));
}

// out[j] = (a[senders[j]] + b[i]) + c[j] for every edge j of row (receiver) i
template <class T>
struct RowGatherAdd {
  const typename T::S* __restrict a; const typename T::S* __restrict b; const typename T::S* __restrict c;
  const i64* __restrict senders; typename T::S* __restrict out;
  i64 F, e0, e1, i;
  template <int W> inline void tile(i64 f0) {
    typename T::A bi[W];
    for (int f = 0; f < W; f++) bi[f] = T::load(b[i * F + f0 + f]);
    for (i64 j = e0; j < e1; j++) {
      const typename T::S* __restrict as = a + senders[j] * F + f0;
      const typename T::S* __restrict cj = c + j * F + f0;
      typename T::S* __restrict o = out + j * F + f0;
      for (int f = 0; f < W; f++) o[f] = T::store((T::load(as[f]) + bi[f]) + T::load(cj[f]));
    }
  }
};

template <class T>
static void gather_add(const void* a, const void* b, const void* c, const i64* senders, const i64* rowptr,
                       void* out, i64 n, i64 F, int nt) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(nt)
  for (i64 i = 0; i < n; i++) {
    RowGatherAdd<T> body{(const typename T::S*)a, (const typename T::S*)b, (const typename T::S*)c, senders,
                         (typename T::S*)out, F, rowptr[i], rowptr[i + 1], i};
    for_tiles(F, body);
  }
}

// ReLU backward fused with the bias gradient of the Linear before the ReLU: g[r] = y[r] <= 0 ? 0 : g[r] in place
// (as torch's threshold_backward: a NaN output keeps its gradient),
// colsum = sum over rows of the new g. Rows are summed in fixed blocks of ROWS_PER_BLOCK (one thread per block)
// and the block sums added in block order, so the result does not depend on the thread count.
static const i64 ROWS_PER_BLOCK = 256;

template <class T>
struct ReluGradBlock {
  typename T::S* __restrict g; const typename T::S* __restrict y; double* __restrict part;
  i64 F, r0, r1;
  template <int W> inline void tile(i64 f0) {
    typename T::A acc[W];
    for (int f = 0; f < W; f++) acc[f] = 0;
    for (i64 r = r0; r < r1; r++) {
      typename T::S* __restrict gr = g + r * F + f0;
      const typename T::S* __restrict yr = y + r * F + f0;
      for (int f = 0; f < W; f++) {
        typename T::A v = T::load(yr[f]) <= 0 ? (typename T::A)0 : T::load(gr[f]);
        gr[f] = T::store(v);
        acc[f] += T::load(gr[f]);
      }
    }
    for (int f = 0; f < W; f++) part[f0 + f] = (double)acc[f];
  }
};

template <class T>
static int relu_backward(void* g, const void* y, void* colsum, i64 rows, i64 F, int nt) {
  const i64 nb = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
  double* part = colsum ? new (std::nothrow) double[nb * F] : nullptr;
  if (colsum && !part) return 2;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (i64 k = 0; k < nb; k++) {
    const i64 r0 = k * ROWS_PER_BLOCK, r1 = r0 + ROWS_PER_BLOCK < rows ? r0 + ROWS_PER_BLOCK : rows;
    if (part) {
      ReluGradBlock<T> body{(typename T::S*)g, (const typename T::S*)y, part + k * F, F, r0, r1};
      for_tiles(F, body);
    } else {
      typename T::S* gg = (typename T::S*)g; const typename T::S* yy = (const typename T::S*)y;
      for (i64 i = r0 * F; i < r1 * F; i++) if (T::load(yy[i]) <= 0) gg[i] = T::store(0);
    }
  }
  if (part) {
    typename T::S* out = (typename T::S*)colsum;
    for (i64 f = 0; f < F; f++) {
      double acc = 0;
      for (i64 k = 0; k < nb; k++) acc += part[k * F + f];
      out[f] = T::store((typename T::A)acc);
    }
    delete[] part;
  }
  return 0;
}

#define DISPATCH(code, CALL)                        \
  switch (code) {                                   \
    case 0: { typedef F32 T; CALL; } return 0;      \
    case 1: { typedef F64 T; CALL; } return 0;      \
    case 2: { typedef BF16 T; CALL; } return 0;     \
    default: return 1;                              \
  }

extern "C" {
int meshgnn_segment_sum(int dtype, const void* x, const i64* rowptr, const i64* perm, void* out, i64 n, i64 F,
                        int nt) {
  if (perm) { DISPATCH(dtype, (segment_sum<T, true>(x, rowptr, perm, out, n, F, nt))) }
  DISPATCH(dtype, (segment_sum<T, false>(x, rowptr, perm, out, n, F, nt)))
}
int meshgnn_segment_expand(int dtype, const void* x, const i64* rowptr, void* out, i64 n, i64 F, int nt) {
  DISPATCH(dtype, segment_expand<T>(x, rowptr, out, n, F, nt))
}
int meshgnn_gather_add(int dtype, const void* a, const void* b, const void* c, const i64* senders,
                       const i64* rowptr, void* out, i64 n, i64 F, int nt) {
  DISPATCH(dtype, gather_add<T>(a, b, c, senders, rowptr, out, n, F, nt))
}
int meshgnn_relu_backward(int dtype, void* g, const void* y, void* colsum, i64 rows, i64 F, int nt) {
  switch (dtype) {
    case 0: return relu_backward<F32>(g, y, colsum, rows, F, nt);
    case 1: return relu_backward<F64>(g, y, colsum, rows, F, nt);
    case 2: return relu_backward<BF16>(g, y, colsum, rows, F, nt);
    default: return 1;
  }
}
}
