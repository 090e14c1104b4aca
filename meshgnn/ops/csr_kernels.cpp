// CPU kernels of meshgnn.ops on receiver-sorted CSR graphs (no torch headers: builds in ~1 s).
//
// Every kernel walks CSR rows; one thread owns a whole row and adds its edges in edge order, so
// results are bitwise identical for any thread count (no atomics). Features are the contiguous inner
// dimension and are processed in tiles of FT so the per-row accumulator stays in registers / L1.
// dtype codes: 0 float32, 1 float64, 2 bfloat16 (accumulated in float32, rounded once, RNE).
#include <cstdint>
#include <cstring>
#include <algorithm>

typedef int64_t i64;
static const i64 FT = 128;

struct F32 { typedef float S; typedef float A;
  static inline A load(S x) { return x; } static inline S store(A x) { return x; } };
struct F64 { typedef double S; typedef double A;
  static inline A load(S x) { return x; } static inline S store(A x) { return x; } };
struct BF16 { typedef uint16_t S; typedef float A;
  static inline A load(S h) { uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f; }
  static inline S store(A f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (S)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                     // round to nearest even
    return (S)(u >> 16);
  } };

// out[i] = sum_{j in rowptr[i]:rowptr[i+1]} x[perm ? perm[j] : j]
template <class T>
static void segment_sum(const void* xv, const i64* rowptr, const i64* perm, void* outv, i64 n, i64 F, int nt) {
  const typename T::S* x = (const typename T::S*)xv;
  typename T::S* out = (typename T::S*)outv;
#pragma omp parallel for schedule(dynamic, 64) num_threads(nt)
  for (i64 i = 0; i < n; i++) {
    const i64 b = rowptr[i], e = rowptr[i + 1];
    for (i64 f0 = 0; f0 < F; f0 += FT) {
      const i64 nf = std::min(FT, F - f0);
      typename T::A acc[FT];
      for (i64 f = 0; f < nf; f++) acc[f] = 0;
      for (i64 j = b; j < e; j++) {
        const typename T::S* row = x + (perm ? perm[j] : j) * F + f0;
        for (i64 f = 0; f < nf; f++) acc[f] += T::load(row[f]);
      }
      typename T::S* o = out + i * F + f0;
      for (i64 f = 0; f < nf; f++) o[f] = T::store(acc[f]);
    }
  }
}

// out[j] = x[i] for every edge j of row i (adjoint of segment_sum)
template <class T>
static void segment_expand(const void* xv, const i64* rowptr, void* outv, i64 n, i64 F, int nt) {
  const typename T::S* x = (const typename T::S*)xv;
  typename T::S* out = (typename T::S*)outv;
#pragma omp parallel for schedule(dynamic, 64) num_threads(nt)
  for (i64 i = 0; i < n; i++)
    for (i64 j = rowptr[i]; j < rowptr[i + 1]; j++)
      std::memcpy(out + j * F, x + i * F, F * sizeof(typename T::S));
}

// out[j] = a[senders[j]] + b[i] + c[j] for every edge j of row i (receiver i)
template <class T>
static void gather_add(const void* av, const void* bv, const void* cv, const i64* senders, const i64* rowptr,
                       void* outv, i64 n, i64 F, int nt) {
  const typename T::S* a = (const typename T::S*)av;
  const typename T::S* bb = (const typename T::S*)bv;
  const typename T::S* c = (const typename T::S*)cv;
  typename T::S* out = (typename T::S*)outv;
#pragma omp parallel for schedule(dynamic, 64) num_threads(nt)
  for (i64 i = 0; i < n; i++) {
    const typename T::S* bi = bb + i * F;
    for (i64 j = rowptr[i]; j < rowptr[i + 1]; j++) {
      const typename T::S* as = a + senders[j] * F;
      const typename T::S* cj = c + j * F;
      typename T::S* o = out + j * F;
      for (i64 f = 0; f < F; f++) o[f] = T::store((T::load(as[f]) + T::load(bi[f])) + T::load(cj[f]));
    }
  }
}

#define DISPATCH(code, CALL) \
  switch (code) { case 0: { typedef F32 T; CALL; } break; case 1: { typedef F64 T; CALL; } break; \
                  case 2: { typedef BF16 T; CALL; } break; default: return 1; } return 0;

extern "C" {
int meshgnn_segment_sum(int dtype, const void* x, const i64* rowptr, const i64* perm, void* out, i64 n, i64 F,
                        int nt) {
  DISPATCH(dtype, segment_sum<T>(x, rowptr, perm, out, n, F, nt))
}
int meshgnn_segment_expand(int dtype, const void* x, const i64* rowptr, void* out, i64 n, i64 F, int nt) {
  DISPATCH(dtype, segment_expand<T>(x, rowptr, out, n, F, nt))
}
int meshgnn_gather_add(int dtype, const void* a, const void* b, const void* c, const i64* senders,
                       const i64* rowptr, void* out, i64 n, i64 F, int nt) {
  DISPATCH(dtype, gather_add<T>(a, b, c, senders, rowptr, out, n, F, nt))
}
}
