// slimkernels._state_key: the identity key of an nn.Module tree's state tensors, in C (and the
// CPU replay's check of the same tree's hooks, `hooked`, at the end).
//
// Caches built from a model's weights (its model_id, checked on every compress / decompress)
// must notice when any state tensor is modified in place, replaced or moved to new storage.
// The Python walk that collects (id, version counter, data pointer) of every parameter and
// persistent buffer costs ~0.2 ms on SlimCAE (193 modules, 271 tensors) and ~0.5 ms right after
// a transform has evicted those objects from the caches: ~5 % of a w=48 compress of a Kodak image.
// This is the same walk through the CPython API: one pass over the modules collecting the tensors
// (strong references), then one over the tensors reading `_version` and `data_ptr()`.
//
// Python-specific by nature (it reads nn.Module's `_modules`, `_parameters`, `_buffers` and
// `_non_persistent_buffers_set` attributes), so it lives apart from the coder's C++ core.
//
// Cold, the walk waits on memory: right after a Kodak image is read and a w=48 compress ran,
// ~0.32 ms, a chain of dependent cache misses (module -> its __dict__ -> `_parameters` -> the
// dict's table -> tensor -> TensorImpl) per module and tensor. With a `prefetch` list the caller
// keeps between calls, the walk first prefetches what the previous walk visited, breadth-first,
// so that those misses overlap: every object and dict (level 1), the dicts' tables (level 2),
// and, before the per-tensor calls, each tensor's TensorImpl (level 3). A prefetch never changes
// what is read; the list only holds strong references, so its addresses stay valid.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

// Interned attribute names, created once (the module is imported with the GIL held).
struct Names {
  PyObject* modules = PyUnicode_InternFromString("_modules");
  PyObject* parameters = PyUnicode_InternFromString("_parameters");
  PyObject* buffers = PyUnicode_InternFromString("_buffers");
  PyObject* non_persistent = PyUnicode_InternFromString("_non_persistent_buffers_set");
  PyObject* version = PyUnicode_InternFromString("_version");
  PyObject* data_ptr = PyUnicode_InternFromString("data_ptr");
  PyObject* is_inference = PyUnicode_InternFromString("is_inference");
};

// The versions given to inference tensors: negative (real versions are >= 0) and each used once.
// Read and written with the GIL held.
long long& untracked_version() {
  static long long v = -1;
  return v;
}

const Names& names() {
  static const Names* n = new Names();  // never freed: lives as long as the interpreter
  return *n;
}

// Strong reference to attribute `name` of module `m`: from its instance __dict__ (where
// nn.Module keeps these; no type lookup), else by the full attribute protocol.
py::object attr(PyObject* m, PyObject* mdict, PyObject* name) {
  if (mdict != nullptr) {
    PyObject* v = PyDict_GetItemWithError(mdict, name);  // borrowed
    if (v != nullptr) return py::reinterpret_borrow<py::object>(v);
    if (PyErr_Occurred()) throw py::error_already_set();
  }
  py::object v = py::reinterpret_steal<py::object>(PyObject_GetAttr(m, name));
  if (!v) throw py::error_already_set();
  return v;
}

// attr() that must be a dict; TypeError naming the module's type otherwise.
py::object dict_attr(PyObject* m, PyObject* mdict, PyObject* name) {
  py::object d = attr(m, mdict, name);
  if (!PyDict_Check(d.ptr()))
    throw py::type_error("state_key: " + std::string(Py_TYPE(m)->tp_name) + "." +
                         std::string(py::str(py::handle(name))) +
                         " is not a dict; expected an nn.Module tree");
  return d;
}

// Prefetch the cache line of p (a hint: never faults, whatever the address). In asm on x86 and
// Arm: gcc 12 dropped the loops of __builtin_prefetch below under -DNDEBUG (Python's CFLAGS),
// as loops without effects.
inline void prefetch(const void* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm volatile("prfm pldl1keep, [%0]" : : "r"(p));
#else
  __builtin_prefetch(p);
#endif
}

// Prefetch n cache lines from p.
inline void prefetch_lines(const void* p, int n) {
  for (int i = 0; i < n; ++i) prefetch(static_cast<const char*>(p) + 64 * i);
}

// The offset of the TensorImpl pointer in a tensor's Python object (torch's THPVariable: 16 in
// torch 2.13, 24 where it is a MaybeOwned<Tensor>), found once from a tensor's `_cdata` (its
// TensorImpl's address); 0 when not found (no TensorImpl prefetch). Read with the GIL held.
Py_ssize_t& impl_offset() {
  static Py_ssize_t off = -1;  // -1: not looked for yet
  return off;
}

void find_impl_offset(PyObject* t) {
  Py_ssize_t& off = impl_offset();
  off = 0;
  py::object cdata = py::reinterpret_steal<py::object>(PyObject_GetAttrString(t, "_cdata"));
  if (!cdata || !PyLong_Check(cdata.ptr())) {
    PyErr_Clear();
    return;
  }
  const unsigned long long want = PyLong_AsUnsignedLongLong(cdata.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    return;
  }
  for (Py_ssize_t o = sizeof(PyObject); o + 8 <= 48 && o + 8 <= Py_TYPE(t)->tp_basicsize; o += 8) {
    unsigned long long v;
    std::memcpy(&v, reinterpret_cast<const char*>(t) + o, sizeof(v));
    if (v == want) {
      off = o;
      return;
    }
  }
}

// The TensorImpl of tensor object t, prefetched (4 lines) when its offset is known; the read stays
// inside the object (tp_basicsize), whatever t is.
inline void prefetch_impl(PyObject* t, Py_ssize_t off) {
  if (off > 0 && off + 8 <= Py_TYPE(t)->tp_basicsize) {
    const void* impl;
    std::memcpy(&impl, reinterpret_cast<const char*>(t) + off, sizeof(impl));
    prefetch_lines(impl, 4);
  }
}

// Levels 1 and 2 of the prefetch (see the header) over the previous walk's objects.
void prefetch_previous(PyObject* list) {
  const Py_ssize_t n = PyList_GET_SIZE(list);
  PyObject** items = reinterpret_cast<PyListObject*>(list)->ob_item;
  for (Py_ssize_t i = 0; i < n; ++i) {  // the objects (and the words before one: a managed dict)
    prefetch(reinterpret_cast<const char*>(items[i]) - 32);
    prefetch(items[i]);
  }
  for (Py_ssize_t i = 0; i < n; ++i) {  // the dicts' tables
    if (PyDict_CheckExact(items[i])) {
      const PyDictObject* d = reinterpret_cast<const PyDictObject*>(items[i]);
      prefetch_lines(d->ma_keys, 3);
      if (d->ma_values != nullptr) prefetch(d->ma_values);
    }
  }
}

// Writes the walk's objects into the caller's prefetch list in order, replacing only what
// changed: the list of an unchanged model is only compared, no reference counts move. What it
// replaces is released when the walk is over (a module freed there runs no code mid-walk).
class PrefetchList {
 public:
  explicit PrefetchList(PyObject* list) : list_(list) {}
  void put(PyObject* o) {
    if (list_ == nullptr) return;
    if (at_ < PyList_GET_SIZE(list_)) {
      PyObject** slot = &reinterpret_cast<PyListObject*>(list_)->ob_item[at_];
      if (*slot != o) {
        dropped_.push_back(py::reinterpret_steal<py::object>(*slot));
        Py_INCREF(o);
        *slot = o;
      }
    } else if (PyList_Append(list_, o) < 0) {
      throw py::error_already_set();
    }
    ++at_;
  }
  void finish() {  // drop the previous walk's tail
    if (list_ != nullptr && at_ < PyList_GET_SIZE(list_) &&
        PyList_SetSlice(list_, at_, PyList_GET_SIZE(list_), nullptr) < 0)
      throw py::error_already_set();
  }

 private:
  PyObject* list_;
  Py_ssize_t at_ = 0;
  std::vector<py::object> dropped_;
};

// Deeper trees are taken for cycles (a module registered under one of its own descendants, e.g. an
// attribute holding a parent model): torch's own recursive walks (state_dict, to) fail far sooner.
constexpr int kMaxDepth = 1000;

// (key, tensors): tensors = every parameter and persistent buffer of root's module tree, in the
// order of slimkernels._state.state_tensors (a stack: a module's parameters, then its persistent
// buffers, then its children pushed in order and taken from the end); key = bytes of
// (id, _version, data_ptr()) per tensor, as int64 triples.
py::tuple state_key(const py::object& root, bool with_modules, const py::object& prefetch) {
  const Names& nm = names();
  PyObject* pf = nullptr;
  if (!prefetch.is_none()) {
    if (!PyList_CheckExact(prefetch.ptr()))
      throw py::type_error("state_key: prefetch must be a list (kept by the caller between "
                           "calls) or None, got " + std::string(Py_TYPE(prefetch.ptr())->tp_name));
    pf = prefetch.ptr();
    prefetch_previous(pf);
  }
  PrefetchList visited(pf);  // this walk's objects, for the next call: never root or its dict
  py::list tensors;
  py::list modules;  // with_modules: every module of the tree, in walk order
  // strong references (nothing is borrowed across Python calls), each with its depth
  std::vector<std::pair<py::object, int>> stack;
  stack.emplace_back(root, 0);
  while (!stack.empty()) {
    py::object m = std::move(stack.back().first);
    const int depth = stack.back().second;
    stack.pop_back();
    if (m.is_none()) continue;
    if (depth > kMaxDepth)  // (a cycle: the walk would never end, its stack growing)
      throw py::value_error(
          "state_key: the module tree is deeper than " + std::to_string(kMaxDepth) +
          " levels: a module is its own descendant (a cycle)");
    if (with_modules && PyList_Append(modules.ptr(), m.ptr()) < 0) throw py::error_already_set();
    py::object mdict = py::reinterpret_steal<py::object>(PyObject_GenericGetDict(m.ptr(), nullptr));
    if (!mdict) PyErr_Clear();  // no instance dict: attribute protocol only
    PyObject* md = mdict && PyDict_Check(mdict.ptr()) ? mdict.ptr() : nullptr;
    if (m.ptr() != root.ptr()) {  // (root's dict holds the caller's list: no reference cycle)
      visited.put(m.ptr());
      if (md != nullptr) visited.put(md);
    }
    PyObject* key;
    PyObject* value;
    Py_ssize_t pos = 0;
    py::object params = dict_attr(m.ptr(), md, nm.parameters);
    visited.put(params.ptr());
    while (PyDict_Next(params.ptr(), &pos, &key, &value))
      if (value != Py_None && PyList_Append(tensors.ptr(), value) < 0)
        throw py::error_already_set();
    py::object buffers = dict_attr(m.ptr(), md, nm.buffers);
    visited.put(buffers.ptr());
    if (PyDict_GET_SIZE(buffers.ptr()) > 0) {
      py::object skip = attr(m.ptr(), md, nm.non_persistent);
      const int any_skip = PyObject_IsTrue(skip.ptr());
      if (any_skip < 0) throw py::error_already_set();
      if (!any_skip) {  // (no Python code runs in this loop: borrowed items stay valid)
        pos = 0;
        while (PyDict_Next(buffers.ptr(), &pos, &key, &value))
          if (value != Py_None && PyList_Append(tensors.ptr(), value) < 0)
            throw py::error_already_set();
      } else {
        // The membership test can run Python code (a set element's __eq__, a set subclass'
        // __contains__) that changes the dict and frees a buffer held only by it: walk a
        // snapshot of the items, strong references (a borrowed one was appended after its
        // tensor was freed: a use after free, found by an ASan build)
        py::list items = py::reinterpret_steal<py::list>(PyDict_Items(buffers.ptr()));
        if (!items) throw py::error_already_set();
        for (const py::handle item : items) {
          PyObject* k = PyTuple_GET_ITEM(item.ptr(), 0);
          PyObject* v = PyTuple_GET_ITEM(item.ptr(), 1);
          if (v == Py_None) continue;
          const int in = PySequence_Contains(skip.ptr(), k);
          if (in < 0) throw py::error_already_set();
          if (in == 0 && PyList_Append(tensors.ptr(), v) < 0) throw py::error_already_set();
        }
      }
    }
    py::object children = dict_attr(m.ptr(), md, nm.modules);
    visited.put(children.ptr());
    pos = 0;
    while (PyDict_Next(children.ptr(), &pos, &key, &value))
      stack.emplace_back(py::reinterpret_borrow<py::object>(value), depth + 1);
  }
  const Py_ssize_t n = PyList_GET_SIZE(tensors.ptr());
  if (pf != nullptr) {
    if (n > 0 && impl_offset() < 0) find_impl_offset(PyList_GET_ITEM(tensors.ptr(), 0));
    for (Py_ssize_t i = 0; i < n; ++i) {  // level 3, and the tensors into the list
      PyObject* t = PyList_GET_ITEM(tensors.ptr(), i);
      prefetch_impl(t, impl_offset());
      visited.put(t);
    }
    visited.finish();
  }
  const Py_ssize_t nm_count = PyList_GET_SIZE(modules.ptr());
  std::vector<int64_t> out(3 * static_cast<size_t>(n + nm_count));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* t = PyList_GET_ITEM(tensors.ptr(), i);
    PyObject* call[2] = {nullptr, t};  // call[0]: the slot ARGUMENTS_OFFSET lets the callee use
    py::object v = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, nm.version));
    long long ver;
    if (v) {
      ver = PyLong_AsLongLong(v.ptr());
      if (ver == -1 && PyErr_Occurred()) throw py::error_already_set();
    } else {
      // An inference tensor (torch.inference_mode) has no version counter: a value never seen
      // before, so that a key holding it never matches (the caches rebuild on every call)
      py::error_already_set err;
      py::object inf = py::reinterpret_steal<py::object>(PyObject_VectorcallMethod(
          nm.is_inference, call + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr));
      if (!inf || PyObject_IsTrue(inf.ptr()) != 1) {
        PyErr_Clear();
        throw err;
      }
      ver = --untracked_version();
    }
    py::object p = py::reinterpret_steal<py::object>(PyObject_VectorcallMethod(
        nm.data_ptr, call + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr));
    if (!p) throw py::error_already_set();
    const unsigned long long ptr = PyLong_AsUnsignedLongLong(p.ptr());
    if (ptr == static_cast<unsigned long long>(-1) && PyErr_Occurred())
      throw py::error_already_set();
    out[3 * i] = static_cast<int64_t>(reinterpret_cast<intptr_t>(t));
    out[3 * i + 1] = static_cast<int64_t>(ver);
    out[3 * i + 2] = static_cast<int64_t>(ptr);
  }
  for (Py_ssize_t i = 0; i < nm_count; ++i) {  // (id, -1, -1) per module: a module added,
    PyObject* mod = PyList_GET_ITEM(modules.ptr(), i);  // removed or replaced changes the key
    out[3 * (n + i)] = static_cast<int64_t>(reinterpret_cast<intptr_t>(mod));
    out[3 * (n + i) + 1] = -1;
    out[3 * (n + i) + 2] = -1;
  }
  py::bytes kb(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(int64_t));
  if (with_modules) return py::make_tuple(kb, tensors, modules);
  return py::make_tuple(kb, tensors);
}

// slimkernels._hooks.hooked over a list of its 5-tuples (a module's forward, forward-pre,
// backward and backward-pre hook dicts, then its __dict__): whether one of the first four is
// non-empty or a __dict__ holds "forward". Prefetched as the walk is (tuples, then their dicts):
// the CPU replay asks it for all 193 modules of SlimCAE before every replay, cold.
bool hooked(const py::list& dicts) {
  static PyObject* forward = PyUnicode_InternFromString("forward");  // (never freed)
  PyObject* list = dicts.ptr();
  const Py_ssize_t n = PyList_GET_SIZE(list);
  PyObject** items = reinterpret_cast<PyListObject*>(list)->ob_item;
  for (Py_ssize_t i = 0; i < n; ++i) prefetch(items[i]);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (PyTuple_CheckExact(items[i]) && PyTuple_GET_SIZE(items[i]) == 5)
      for (Py_ssize_t j = 0; j < 5; ++j) prefetch(PyTuple_GET_ITEM(items[i], j));
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {  // (a __bool__ may run Python code)
    py::object t = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(list, i));
    if (!PyTuple_CheckExact(t.ptr()) || PyTuple_GET_SIZE(t.ptr()) != 5)
      throw py::type_error("hooked: expected the 5-tuples of slimkernels._hooks.hook_dicts, got "
                           "a " + std::string(Py_TYPE(t.ptr())->tp_name));
    for (Py_ssize_t j = 0; j < 4; ++j) {
      const int on = PyObject_IsTrue(PyTuple_GET_ITEM(t.ptr(), j));
      if (on < 0) throw py::error_already_set();
      if (on) return true;
    }
    const int own = PySequence_Contains(PyTuple_GET_ITEM(t.ptr(), 4), forward);
    if (own < 0) throw py::error_already_set();
    if (own) return true;
  }
  return false;
}

}  // namespace

#ifndef SK_SOURCE_STAMP  // (the sources' stamp: setup.py, slimkernels/_build_stamp.py)
#define SK_SOURCE_STAMP ""
#endif

PYBIND11_MODULE(_state_key, m) {
  m.attr("SOURCE_STAMP") = SK_SOURCE_STAMP;
  m.doc() = "The identity key of an nn.Module tree's state tensors (see slimkernels._state), and "
            "the check of its hooks (slimkernels._hooks.hooked).";
  m.def("state_key", &state_key, py::arg("root"), py::arg("with_modules") = false,
        py::arg("prefetch") = py::none(),
        "state_key(root: nn.Module, with_modules=False, prefetch=None) -> (bytes, list[Tensor]): "
        "every "
        "parameter and persistent buffer of root's tree, and the bytes of their (id, _version, "
        "data_ptr()) as int64 triples. Equal keys (while the list is kept alive) mean the same "
        "tensor objects, unmodified in place and on the same storage. with_modules: also an "
        "(id, -1, -1) triple per module of the tree, and the modules as a third element "
        "(keep them with the key): equal keys then also mean the same modules. prefetch: a list "
        "the caller keeps between calls (start with []): the walk prefetches the objects the "
        "previous walk left in it, then puts its own there (strong references to the modules, "
        "their dicts and the tensors, never root's): the same key ~2x faster cold.");
  m.def("hooked", &hooked, py::arg("dicts"),
        "hooked(dicts: list[tuple[dict, dict, dict, dict, dict]]) -> bool: "
        "slimkernels._hooks.hooked over the list of hook_dicts (a hook dict non-empty, or an "
        "instance __dict__ holding 'forward'), with the dicts prefetched first.");
  m.def("tensor_impl_offset", []() { return impl_offset(); },
        "tensor_impl_offset() -> int: where the walks with a prefetch list read a tensor's "
        "TensorImpl address in its Python object (bytes from its start); 0: not found in this "
        "torch (no TensorImpl prefetch), -1: not looked for yet (no walk with a list so far).");
}
