/* libcublas.so.12 for faiss-gpu (CUDA 12) on a machine that has only CUDA 13's cuBLAS.
 *
 * faiss-gpu needs libcublas.so.12 (and lists libcublasLt.so.12), about 600 MB of wheels that a
 * machine without a package index must receive in 60 MiB pieces. faiss calls eight cuBLAS functions,
 * whose C signatures are the same in cuBLAS 12 and 13. This library exports those eight under the
 * symbol version faiss was linked against (`libcublas.so.12`, see the version script built by
 * benchmarks/gpu_device_run.sh) and forwards each call to libcublas.so.13, found on the loader path.
 * Enum arguments (operations, data types, compute types, algorithms, math modes) pass through as ints.
 * Used only by the GPU check script; the project itself never links cuBLAS.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int status_t;
typedef void *handle_t;

static void *lib;

static void *fn(const char *name) {
  if (!lib) {
    lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
      fprintf(stderr, "error: cublas12 shim: %s\n", dlerror());
      abort();
    }
  }
  void *f = dlsym(lib, name);
  if (!f) {
    fprintf(stderr, "error: cublas12 shim: libcublas.so.13 lacks %s\n", name);
    abort();
  }
  return f;
}

#define FORWARD(name, params, args)              \
  status_t name params {                         \
    static status_t(*f) params;                  \
    if (!f) f = (status_t(*) params)fn(#name);   \
    return f args;                               \
  }

FORWARD(cublasCreate_v2, (handle_t * h), (h))
FORWARD(cublasDestroy_v2, (handle_t h), (h))
FORWARD(cublasSetStream_v2, (handle_t h, void *stream), (h, stream))
FORWARD(cublasGetMathMode, (handle_t h, int *mode), (h, mode))
FORWARD(cublasSetMathMode, (handle_t h, int mode), (h, mode))
FORWARD(cublasSgemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const void *A, int at,
         int lda, const void *B, int bt, int ldb, const float *beta, void *C, int ct, int ldc),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc))
FORWARD(cublasGemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at,
         int lda, const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc,
         int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at,
         int lda, long long sa, const void *B, int bt, int ldb, long long sb, const void *beta,
         void *C, int ct, int ldc, long long sc, int batch, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch,
         compute, algo))
