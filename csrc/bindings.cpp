// pybind11 binding of the rANS coder: module slimkernels._coder. Thin: shape checks, no copies
// (arrays must already be C-contiguous int32 / float64; slimkernels/coding.py converts), the GIL
// released while coding. slimcoder::Error is a std::invalid_argument -> Python ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "range_coder.hpp"

namespace py = pybind11;
using I32 = py::array_t<int32_t, py::array::c_style>;
using F64 = py::array_t<double, py::array::c_style>;
using I64 = py::array_t<int64_t, py::array::c_style>;

namespace {

// ValueError for an array whose data is not aligned to its element size (a C-contiguous view
// at an odd byte offset, e.g. np.frombuffer(b[1:], np.int32)): pybind's array check takes it,
// and the coder's int32 / int64 / double loads of it were undefined behaviour (UBSan). The
// Python layer (slimkernels/coding.py) copies such arrays first; this refuses them here.
template <class A>
const A& aligned(const A& a, const char* name) {
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(typename A::value_type) != 0)
    throw slimcoder::Error(std::string(name) + " is not aligned to its element size (a view at "
                           "an odd byte offset): pass a copy, e.g. np.require(a, requirements="
                           "'CA'), or use slimkernels.coding, which copies");
  return a;
}

slimcoder::Tables make_tables(const I32& cdfs, const I32& lengths, const I32& offsets,
                              int precision) {
  aligned(cdfs, "cdfs");
  aligned(lengths, "cdf_lengths");
  aligned(offsets, "offsets");
  if (cdfs.ndim() != 2)
    throw slimcoder::Error("cdfs must be 2-D [num_cdfs, max_length], got " +
                           std::to_string(cdfs.ndim()) + " dimensions");
  if (lengths.ndim() != 1 || lengths.shape(0) != cdfs.shape(0))
    throw slimcoder::Error("cdf_lengths must be 1-D with cdfs.shape[0] = " +
                           std::to_string(cdfs.shape(0)) + " entries");
  if (offsets.ndim() != 1 || offsets.shape(0) != cdfs.shape(0))
    throw slimcoder::Error("offsets must be 1-D with cdfs.shape[0] = " +
                           std::to_string(cdfs.shape(0)) + " entries");
  slimcoder::Tables t;
  t.cdfs = cdfs.data();
  t.num_cdfs = cdfs.shape(0);
  t.max_length = cdfs.shape(1);
  t.lengths = lengths.data();
  t.offsets = offsets.data();
  t.precision = precision;
  return t;
}

// The executor of an `executor=` argument: None (the coder's own worker pool) or the capsule of
// slimkernels._cpu_kernels.coder_executor(), checked by name (no other object passes for one).
constexpr const char* kExecutorCapsule = "slimkernels.coder_executor";
slimcoder::Executor executor_of(const py::object& o) {
  if (o.is_none()) return nullptr;
  if (!PyCapsule_CheckExact(o.ptr()) || !PyCapsule_IsValid(o.ptr(), kExecutorCapsule))
    throw slimcoder::Error("executor must be None or slimkernels._cpu_kernels.coder_executor(), "
                           "got " + std::string(py::str(py::type::of(o).attr("__name__"))));
  return reinterpret_cast<slimcoder::Executor>(PyCapsule_GetPointer(o.ptr(), kExecutorCapsule));
}

// An optional output of encode / decode: None or a writeable C-contiguous int64 array of >= 1.
void check_stats(const py::object& stats) {
  if (!stats.is_none() && (!py::isinstance<I64>(stats) || stats.cast<I64>().size() < 1 ||
                           !stats.cast<I64>().writeable()))
    throw slimcoder::Error("stats must be None or a writeable C-contiguous int64 numpy array of "
                           "at least 1 element");
  if (!stats.is_none()) aligned(stats.cast<I64>(), "stats");
}

// run: symbols per index (symbol j uses indexes[j / run]); symbols.size() == indexes.size() * run.
void check_sizes(py::ssize_t symbols, py::ssize_t indexes, int64_t run) {
  if (run < 1) throw slimcoder::Error("index run must be >= 1, got " + std::to_string(run));
  long long product = 0;  // (overflow: a huge run times a few indexes wrapped to a match)
  if (__builtin_mul_overflow(static_cast<long long>(indexes), static_cast<long long>(run),
                             &product) ||
      static_cast<long long>(symbols) != product)
    throw slimcoder::Error("symbols has " + std::to_string(symbols) + " elements but indexes has " +
                           std::to_string(indexes) + (run == 1 ? "" : " x run " + std::to_string(run)));
}

py::bytes encode(const I32& symbols, const I32& indexes, const I32& cdfs, const I32& lengths,
                 const I32& offsets, int precision, int64_t streams, int threads, int64_t run,
                 const py::object& executor, const py::object& stats) {
  check_sizes(symbols.size(), indexes.size(), run);
  aligned(symbols, "symbols");
  aligned(indexes, "indexes");
  const slimcoder::Tables t = make_tables(cdfs, lengths, offsets, precision);
  const slimcoder::Executor ex = executor_of(executor);
  check_stats(stats);  // [0] = the substreams coded as two lane halves (tests: which path ran)
  slimcoder::EncodedParts parts;
  {
    py::gil_scoped_release release;
    slimcoder::encode_parts(symbols.data(), indexes.data(), symbols.size(), t, streams, threads,
                            parts, run, ex);
  }
  if (!stats.is_none()) stats.cast<I64>().mutable_data()[0] = parts.split;
  // One copy, straight into the bytes object.
  PyObject* out = PyBytes_FromStringAndSize(nullptr, py::ssize_t(parts.total_size()));
  if (!out) throw py::error_already_set();
  parts.copy_to(reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out)));
  return py::reinterpret_steal<py::bytes>(out);
}

// shape: the symbols' shape (None: that of indexes); run as for encode.
I32 decode(const py::buffer& data, const I32& indexes, const I32& cdfs, const I32& lengths,
           const I32& offsets, int precision, int threads, py::object shape, int64_t run,
           const py::object& executor, const py::object& stats) {
  check_stats(stats);
  const py::buffer_info info = data.request();
  if (info.itemsize != 1 || info.ndim > 1 || (info.ndim == 1 && info.strides[0] != 1))
    throw slimcoder::Error("data must be a contiguous byte buffer (bytes, bytearray, uint8)");
  aligned(indexes, "indexes");
  const slimcoder::Tables t = make_tables(cdfs, lengths, offsets, precision);
  const slimcoder::Executor ex = executor_of(executor);
  std::vector<py::ssize_t> dims(indexes.shape(), indexes.shape() + indexes.ndim());
  if (!shape.is_none()) {
    dims.clear();
    for (py::handle d : py::sequence(shape)) dims.push_back(d.cast<py::ssize_t>());
  }
  py::ssize_t n = 1;
  for (py::ssize_t d : dims) {
    if (d < 0) throw slimcoder::Error("shape has a negative dimension");
    if (d > 0 && n > PY_SSIZE_T_MAX / d) throw slimcoder::Error("shape is too large");
    n *= d;
  }
  check_sizes(n, indexes.size(), run);
  const uint8_t* d = static_cast<const uint8_t*>(info.ptr);
  const size_t size = size_t(info.size);
  // The output is allocated only after decode_to's checks (arguments, header, the symbol count
  // against the data): a wrong shape= or a forged header allocates nothing.
  I32 out;
  int64_t escapes = 0;
  {
    py::gil_scoped_release release;
    escapes = slimcoder::decode_to(d, size, indexes.data(), int64_t(n), t, threads, [&]() {
      py::gil_scoped_acquire acquire;  // (a MemoryError propagates as error_already_set)
      out = I32(dims);
      return out.mutable_data();
    }, run, ex);
  }
  if (!stats.is_none()) stats.cast<I64>().mutable_data()[0] = escapes;
  return out;
}

int64_t stream_count(const py::buffer& data) {
  const py::buffer_info info = data.request();
  if (info.itemsize != 1 || info.ndim > 1 || (info.ndim == 1 && info.strides[0] != 1))
    throw slimcoder::Error("data must be a contiguous byte buffer (bytes, bytearray, uint8)");
  return slimcoder::stream_count(static_cast<const uint8_t*>(info.ptr), size_t(info.size));
}

void validate(const I32& cdfs, const I32& lengths, const I32& offsets, int precision) {
  slimcoder::validate_tables(make_tables(cdfs, lengths, offsets, precision));
}

I32 pmf_to_quantized_cdf(const F64& pmf, int precision) {
  if (pmf.ndim() != 1) throw slimcoder::Error("pmf must be 1-D");
  aligned(pmf, "pmf");
  std::vector<int32_t> cdf = slimcoder::pmf_to_quantized_cdf(pmf.data(), pmf.size(), precision);
  I32 out(py::ssize_t(cdf.size()));
  std::copy(cdf.begin(), cdf.end(), out.mutable_data());
  return out;
}

py::tuple pmfs_to_quantized_cdfs(const F64& pmfs, const I32& pmf_lengths, py::object tail_masses,
                                 int precision) {
  if (pmfs.ndim() != 2) throw slimcoder::Error("pmfs must be 2-D [num_cdfs, max_pmf_length]");
  const py::ssize_t rows = pmfs.shape(0), cols = pmfs.shape(1);
  if (pmf_lengths.ndim() != 1 || pmf_lengths.shape(0) != rows)
    throw slimcoder::Error("pmf_lengths must be 1-D with pmfs.shape[0] entries");
  aligned(pmfs, "pmfs");
  aligned(pmf_lengths, "pmf_lengths");
  const double* tails = nullptr;
  F64 tail_arr;
  if (!tail_masses.is_none()) {
    tail_arr = tail_masses.cast<F64>();
    if (tail_arr.ndim() != 1 || tail_arr.shape(0) != rows)
      throw slimcoder::Error("tail_masses must be 1-D with pmfs.shape[0] entries");
    aligned(tail_arr, "tail_masses");
    tails = tail_arr.data();
  }
  I32 cdfs({rows, cols + 2});
  I32 lengths(rows);
  slimcoder::pmfs_to_quantized_cdfs(pmfs.data(), rows, cols, pmf_lengths.data(), tails, precision,
                                    cdfs.mutable_data(), cols + 2, lengths.mutable_data());
  return py::make_tuple(cdfs, lengths);
}

}  // namespace

#ifndef SK_SOURCE_STAMP  // (the sources' stamp: setup.py, slimkernels/_build_stamp.py)
#define SK_SOURCE_STAMP ""
#endif

PYBIND11_MODULE(_coder, m) {
  m.attr("SOURCE_STAMP") = SK_SOURCE_STAMP;
  m.doc() = "slimkernels interleaved rANS entropy coder (C++17). Use slimkernels.coding.";
  m.attr("FORMAT_VERSION") = int(slimcoder::kFormatVersion);
  m.attr("LANES") = slimcoder::kLanes;
  m.attr("MIN_HALVES_SYMBOLS") = slimcoder::kMinHalvesSymbols;
  m.def("encode", &encode, py::arg("symbols").noconvert(), py::arg("indexes").noconvert(),
        py::arg("cdfs").noconvert(), py::arg("cdf_lengths").noconvert(),
        py::arg("offsets").noconvert(), py::arg("precision"), py::arg("streams"),
        py::arg("threads"), py::arg("run") = 1, py::arg("executor") = py::none(),
        py::arg("stats") = py::none());
  m.def("decode", &decode, py::arg("data"), py::arg("indexes").noconvert(),
        py::arg("cdfs").noconvert(), py::arg("cdf_lengths").noconvert(),
        py::arg("offsets").noconvert(), py::arg("precision"), py::arg("threads"),
        py::arg("shape") = py::none(), py::arg("run") = 1, py::arg("executor") = py::none(),
        py::arg("stats") = py::none());
  m.def("stream_count", &stream_count, py::arg("data"));
  m.def("validate_tables", &validate, py::arg("cdfs").noconvert(),
        py::arg("cdf_lengths").noconvert(), py::arg("offsets").noconvert(),
        py::arg("precision"));
  m.def("pmf_to_quantized_cdf", &pmf_to_quantized_cdf, py::arg("pmf").noconvert(),
        py::arg("precision"));
  m.def("pmfs_to_quantized_cdfs", &pmfs_to_quantized_cdfs, py::arg("pmfs").noconvert(),
        py::arg("pmf_lengths").noconvert(), py::arg("tail_masses"), py::arg("precision"));
}
