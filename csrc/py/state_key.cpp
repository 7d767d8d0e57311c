// slimkernels._state_key: the identity key of an nn.Module tree's state tensors, in C.
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
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
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

// (key, tensors): tensors = every parameter and persistent buffer of root's module tree, in the
// order of slimkernels._state.state_tensors (a stack: a module's parameters, then its persistent
// buffers, then its children pushed in order and taken from the end); key = bytes of
// (id, _version, data_ptr()) per tensor, as int64 triples.
py::tuple state_key(const py::object& root, bool with_modules) {
  const Names& nm = names();
  py::list tensors;
  py::list modules;  // with_modules: every module of the tree, in walk order
  std::vector<py::object> stack;  // strong references: nothing is borrowed across Python calls
  stack.push_back(root);
  while (!stack.empty()) {
    py::object m = std::move(stack.back());
    stack.pop_back();
    if (m.is_none()) continue;
    if (with_modules && PyList_Append(modules.ptr(), m.ptr()) < 0) throw py::error_already_set();
    py::object mdict = py::reinterpret_steal<py::object>(PyObject_GenericGetDict(m.ptr(), nullptr));
    if (!mdict) PyErr_Clear();  // no instance dict: attribute protocol only
    PyObject* md = mdict && PyDict_Check(mdict.ptr()) ? mdict.ptr() : nullptr;
    PyObject* key;
    PyObject* value;
    Py_ssize_t pos = 0;
    py::object params = dict_attr(m.ptr(), md, nm.parameters);
    while (PyDict_Next(params.ptr(), &pos, &key, &value))
      if (value != Py_None && PyList_Append(tensors.ptr(), value) < 0)
        throw py::error_already_set();
    py::object buffers = dict_attr(m.ptr(), md, nm.buffers);
    if (PyDict_GET_SIZE(buffers.ptr()) > 0) {
      py::object skip = attr(m.ptr(), md, nm.non_persistent);
      const int any_skip = PyObject_IsTrue(skip.ptr());
      if (any_skip < 0) throw py::error_already_set();
      pos = 0;
      while (PyDict_Next(buffers.ptr(), &pos, &key, &value)) {
        if (value == Py_None) continue;
        if (any_skip) {
          const int in = PySequence_Contains(skip.ptr(), key);
          if (in < 0) throw py::error_already_set();
          if (in == 1) continue;
        }
        if (PyList_Append(tensors.ptr(), value) < 0) throw py::error_already_set();
      }
    }
    py::object children = dict_attr(m.ptr(), md, nm.modules);
    pos = 0;
    while (PyDict_Next(children.ptr(), &pos, &key, &value))
      stack.push_back(py::reinterpret_borrow<py::object>(value));
  }
  const Py_ssize_t n = PyList_GET_SIZE(tensors.ptr());
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

}  // namespace

PYBIND11_MODULE(_state_key, m) {
  m.doc() = "The identity key of an nn.Module tree's state tensors (see slimkernels._state).";
  m.def("state_key", &state_key, py::arg("root"), py::arg("with_modules") = false,
        "state_key(root: nn.Module, with_modules=False) -> (bytes, list[Tensor]): every "
        "parameter and persistent buffer of root's tree, and the bytes of their (id, _version, "
        "data_ptr()) as int64 triples. Equal keys (while the list is kept alive) mean the same "
        "tensor objects, unmodified in place and on the same storage. with_modules: also an "
        "(id, -1, -1) triple per module of the tree, and the modules as a third element "
        "(keep them with the key): equal keys then also mean the same modules.");
}
