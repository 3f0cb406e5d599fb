# Reads csrc/build.json, the one list of sources and flags that setup.py reads too.
#
# lightgcn_ext_read_manifest(<path>) sets, in the caller's scope:
#   LIGHTGCN_EXT_MANIFEST_KINDS         the source kinds, in the file's order
#   LIGHTGCN_EXT_SOURCES_<kind>         the sources of each kind, as listed (relative to the root)
#   LIGHTGCN_EXT_<key>                  for key in cxx_flags, cxx_debug_flags, nvcc_flags,
#                                       nvcc_debug_flags: the flag list
# and makes CMake re-run its configure step whenever the file changes.
#
# lightgcn_ext_json_array(<out> [items...]) sets <out> to a JSON array of the items as strings.

# The kinds this project knows: a new kind in build.json must be taught to
# setup.py and here, so an unknown one is an error rather than a silent omission.
set(LIGHTGCN_EXT_KNOWN_KINDS common python_module cpu cuda)
set(_LIGHTGCN_EXT_FLAG_KEYS cxx_flags cxx_debug_flags nvcc_flags nvcc_debug_flags)

# Sets <out> to the strings of the JSON array at <json>[keys...].
function(_lightgcn_ext_json_strings out json)
  string(JSON _type ERROR_VARIABLE _err TYPE "${json}" ${ARGN})
  if(_err)
    string(REPLACE ";" "." _where "${ARGN}")
    message(FATAL_ERROR "csrc/build.json: missing \"${_where}\": ${_err}")
  endif()
  if(NOT _type STREQUAL "ARRAY")
    string(REPLACE ";" "." _where "${ARGN}")
    message(FATAL_ERROR "csrc/build.json: \"${_where}\" must be an array of strings, got ${_type}")
  endif()
  string(JSON _n LENGTH "${json}" ${ARGN})
  set(_items "")
  if(_n GREATER 0)
    math(EXPR _last "${_n} - 1")
    foreach(_i RANGE ${_last})
      string(JSON _item GET "${json}" ${ARGN} ${_i})
      if(_item MATCHES ";")
        message(FATAL_ERROR "csrc/build.json: \"${_item}\" contains ';', which CMake lists cannot hold")
      endif()
      list(APPEND _items "${_item}")
    endforeach()
  endif()
  set(${out} "${_items}" PARENT_SCOPE)
endfunction()

function(lightgcn_ext_read_manifest path)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${path}")
  file(READ "${path}" _json)

  string(JSON _num_kinds ERROR_VARIABLE _err LENGTH "${_json}" sources)
  if(_err)
    message(FATAL_ERROR "${path}: no \"sources\" object: ${_err}")
  endif()
  set(_kinds "")
  if(_num_kinds GREATER 0)
    math(EXPR _last "${_num_kinds} - 1")
    foreach(_i RANGE ${_last})
      string(JSON _kind MEMBER "${_json}" sources ${_i})
      if(NOT _kind IN_LIST LIGHTGCN_EXT_KNOWN_KINDS)
        message(FATAL_ERROR "${path}: unknown source kind \"${_kind}\" "
                            "(known: ${LIGHTGCN_EXT_KNOWN_KINDS}); teach setup.py and CMakeLists.txt")
      endif()
      _lightgcn_ext_json_strings(_sources "${_json}" sources ${_kind})
      set(LIGHTGCN_EXT_SOURCES_${_kind} "${_sources}" PARENT_SCOPE)
      list(APPEND _kinds ${_kind})
    endforeach()
  endif()
  foreach(_kind IN LISTS LIGHTGCN_EXT_KNOWN_KINDS)
    if(NOT _kind IN_LIST _kinds)
      set(LIGHTGCN_EXT_SOURCES_${_kind} "" PARENT_SCOPE)
    endif()
  endforeach()
  set(LIGHTGCN_EXT_MANIFEST_KINDS "${_kinds}" PARENT_SCOPE)

  foreach(_key IN LISTS _LIGHTGCN_EXT_FLAG_KEYS)
    _lightgcn_ext_json_strings(_flags "${_json}" ${_key})
    set(LIGHTGCN_EXT_${_key} "${_flags}" PARENT_SCOPE)
  endforeach()
endfunction()

function(lightgcn_ext_json_array out)
  set(_array "[]")
  set(_i 0)
  foreach(_item IN LISTS ARGN)
    string(REPLACE "\\" "\\\\" _item "${_item}")
    string(REPLACE "\"" "\\\"" _item "${_item}")
    string(JSON _array SET "${_array}" ${_i} "\"${_item}\"")
    math(EXPR _i "${_i} + 1")
  endforeach()
  set(${out} "${_array}" PARENT_SCOPE)
endfunction()
