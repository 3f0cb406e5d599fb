// Makes the shared library importable as `lightgcn_ext._C`. Importing it runs
// the static TORCH_LIBRARY registrations of the other sources; the ops are
// then reached through torch.ops.lightgcn_ext. Only the Python build needs it.
//
// The module records the torch it was built against, so that the package can
// refuse, with instructions, an extension built for another torch.
#include <Python.h>

#ifndef LIGHTGCN_EXT_TORCH_VERSION
#error "setup.py defines LIGHTGCN_EXT_TORCH_VERSION"
#endif

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "Registers the lightgcn_ext ops with torch (torch.ops.lightgcn_ext).",
      -1,
      nullptr,
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "torch_version", LIGHTGCN_EXT_TORCH_VERSION) < 0 ||
      PyModule_AddIntConstant(module, "with_cuda", LIGHTGCN_EXT_WITH_CUDA) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
