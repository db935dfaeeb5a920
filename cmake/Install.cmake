# Install rules and packaging (`cmake --install build [--prefix DIR]`):
#   include/indexcache/*.h                       the C ABI header(s)
#   lib/libindexcache.so                         target `indexcache` (bindings_c/), exported as
#                                                indexcache::indexcache
#   bin/indexcache                               target `indexcache_cli` (tools/), when it exists
#   lib/cmake/indexcache/indexcache{Config,ConfigVersion,Targets}.cmake   for find_package(indexcache)
#   lib/pkgconfig/indexcache.pc                  for pkg-config --cflags --libs indexcache
# Included at the end of the top-level CMakeLists.txt, after every add_subdirectory(), so that the
# `if(TARGET ...)` guards see the targets. Both package files are relocatable: they find the prefix
# from their own location, so `cmake --install build --prefix /elsewhere` works.
#
# For install(EXPORT) to work, the `indexcache` target must (1) link its static dependencies (ic_sdk,
# Abseil, ...) PRIVATE, so that they are not part of its link interface, and (2) declare its public
# include directory as $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> (the installed one is added
# below through INCLUDES DESTINATION).
include(CMakePackageConfigHelpers)

set(IC_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/indexcache CACHE STRING
    "Where indexcacheConfig.cmake is installed, relative to the prefix")
set(IC_INSTALL_PKGCONFIGDIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig CACHE STRING
    "Where indexcache.pc is installed, relative to the prefix")

if(EXISTS ${PROJECT_SOURCE_DIR}/include/indexcache)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/indexcache
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
          COMPONENT indexcache_dev
          FILES_MATCHING PATTERN "*.h")
endif()

if(TARGET indexcache)
  install(TARGETS indexcache
          EXPORT indexcacheTargets
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT indexcache_runtime
                  NAMELINK_COMPONENT indexcache_dev
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT indexcache_dev
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT indexcache_runtime
          INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT indexcacheTargets
          NAMESPACE indexcache::
          FILE indexcacheTargets.cmake
          DESTINATION ${IC_INSTALL_CMAKEDIR}
          COMPONENT indexcache_dev)

  configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/indexcacheConfig.cmake.in
                                ${PROJECT_BINARY_DIR}/indexcacheConfig.cmake
                                INSTALL_DESTINATION ${IC_INSTALL_CMAKEDIR})
  # 0.x: a minor version may break the ABI, so only the same major.minor is compatible.
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/indexcacheConfigVersion.cmake
                                   VERSION ${PROJECT_VERSION}
                                   COMPATIBILITY SameMinorVersion)
  install(FILES ${PROJECT_BINARY_DIR}/indexcacheConfig.cmake
                ${PROJECT_BINARY_DIR}/indexcacheConfigVersion.cmake
          DESTINATION ${IC_INSTALL_CMAKEDIR}
          COMPONENT indexcache_dev)

  # pkg-config: prefix relative to the .pc file's own directory (${pcfiledir}), for relocation.
  if(IS_ABSOLUTE "${IC_INSTALL_PKGCONFIGDIR}")
    set(IC_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  else()
    file(RELATIVE_PATH _ic_pc_up "/ic_prefix/${IC_INSTALL_PKGCONFIGDIR}" "/ic_prefix")
    string(REGEX REPLACE "/$" "" _ic_pc_up "${_ic_pc_up}")
    set(IC_PC_PREFIX "\${pcfiledir}/${_ic_pc_up}")
  endif()
  foreach(_ic_dir LIBDIR INCLUDEDIR)
    if(IS_ABSOLUTE "${CMAKE_INSTALL_${_ic_dir}}")
      set(IC_PC_${_ic_dir} "${CMAKE_INSTALL_${_ic_dir}}")
    else()
      set(IC_PC_${_ic_dir} "\${prefix}/${CMAKE_INSTALL_${_ic_dir}}")
    endif()
  endforeach()
  configure_file(${CMAKE_CURRENT_LIST_DIR}/indexcache.pc.in ${PROJECT_BINARY_DIR}/indexcache.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/indexcache.pc
          DESTINATION ${IC_INSTALL_PKGCONFIGDIR}
          COMPONENT indexcache_dev)
else()
  message(STATUS "IndexCache: no `indexcache` library target; install/packaging of it skipped")
endif()

if(TARGET indexcache_cli)
  # The installed CLI finds libindexcache.so (if it links it) in ../lib, wherever the prefix is.
  get_target_property(_ic_cli_rpath indexcache_cli INSTALL_RPATH)
  if(NOT _ic_cli_rpath)
    file(RELATIVE_PATH _ic_bin_to_lib "/ic_prefix/${CMAKE_INSTALL_BINDIR}"
         "/ic_prefix/${CMAKE_INSTALL_LIBDIR}")
    set_target_properties(indexcache_cli PROPERTIES INSTALL_RPATH "$ORIGIN/${_ic_bin_to_lib}")
  endif()
  install(TARGETS indexcache_cli
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
          COMPONENT indexcache_runtime)
endif()
